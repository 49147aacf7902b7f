"""Device registries: every driver family (arm, camera, teleop device, policy backend) chooses its
device by a typed config with a ``type`` field (docs/design.md, "Robots as data").

Each device has its own pydantic config model (a :class:`DeviceConfig` subclass, in the device's own
file, with the device's keys and nothing else) and one line in its family's registry below:
``type -> "module:ConfigClass"``. The models are imported lazily, so validating a config imports no
hardware SDK; a device whose SDK (a package extra) is missing fails at ``robot-stack check`` with
the extra to install. Adding a device is one file and one registry line.

In a setup config::

    cam_wrist:
      kind: camera
      params: {camera_id: wrist, driver: {type: realsense, serial: "123456789012"}}

A bare type name (``driver: synthetic``) is shorthand for ``{type: synthetic}``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


@dataclass(frozen=True)
class Check:
    """One preflight answer (``robot-stack doctor``): is something there and usable.

    Attributes:
        ok: it is.
        what: the thing checked ("RealSense 123456", "UR at 192.168.1.102").
        detail: what was found, or why not, in one line.
        fix: what to do when not ok ("" when ok).
        blocking: a failure means the setup cannot start (else it is information).
    """

    ok: bool
    what: str
    detail: str
    fix: str = ""
    blocking: bool = True


def tcp_port_open(host: str, port: int, timeout_s: float = 1.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout_s``, else why not."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"


def path_check(what: str, path: str, fix: str) -> Check:
    """A file or device node that must exist."""
    import os

    if os.path.exists(path):
        return Check(True, what, f"{path} exists")
    return Check(False, what, f"{path} does not exist", fix)


def realtime_kernel() -> bool:
    """The running kernel is real-time (PREEMPT_RT): ``/sys/kernel/realtime`` reads 1, or the
    version string names PREEMPT_RT."""
    import os

    try:
        with open("/sys/kernel/realtime") as f:
            if f.read().strip() == "1":
                return True
    except OSError:
        pass
    return "PREEMPT_RT" in os.uname().version


def servo_bus_check(what: str, port: str, ids: list[int], open_bus) -> list[Check]:
    """The port exists and every servo answers a ping (``open_bus()`` opens the bus and pings each
    id, raising an error that names the one that does not answer)."""
    import os

    if not os.path.exists(port):
        return [
            Check(
                False,
                f"{what} port {port}",
                "does not exist",
                "plug in the bus adapter; ls /dev/ttyACM* /dev/ttyUSB* lists the host's serial ports",
            )
        ]
    try:
        bus = open_bus()
    except Exception as e:  # noqa: BLE001 - the SDK's and pyserial's errors: each names its cause
        return [
            Check(
                False,
                f"{what} on {port}",
                " ".join(str(e).split()),
                "check the servos' power, ids and baud rate (robot-stack calibrate servos pings them)",
            )
        ]
    try:
        models = getattr(bus, "models", {})
        return [Check(True, f"{what} on {port}", "servos " + ", ".join(f"{i} (model {m})" for i, m in models.items()))]
    finally:
        bus.close()


class DeviceConfig(BaseModel):
    """Base of every device's config: ``type`` names the device; unknown keys are errors.

    Class attributes:
        extra: the package extra that brings the device's SDK (``pip install "robot-stack[X]"``).
        requires: importable module names the device needs (checked at ``robot-stack check``).
    """

    model_config = ConfigDict(extra="forbid")
    type: str
    extra: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()

    def references(self) -> dict[str, str]:
        """Other nodes this device needs: node name -> required node kind (checked at ``check``)."""
        return {}

    def default_robot(self, config) -> str | None:
        """The robot model this device implies when the node names none (arm drivers), given the
        setup's ``StackConfig`` (None: no default; the node must name one)."""
        return None

    def build(self, ctx, params):
        """The driver object, from this config, the node's context and its typed params."""
        raise NotImplementedError(f"{type(self).__name__}.build")

    def doctor(self) -> list[Check]:
        """Preflight checks that start nothing (``robot-stack doctor``): is the device there (its
        address answers, its serial is connected, its port exists and its servos answer, its
        file exists). Default: none beyond the SDK check every device gets."""
        return []


class DeviceRegistry:
    """The devices of one family: ``type -> "module:ConfigClass"``.

    Args:
        family: name used in messages ("arm driver", "camera driver", ...).
        key: the params key that holds the device config (``driver``, ``device``, ``backend``).
        types: the registry.
    """

    def __init__(self, family: str, key: str, types: dict[str, str]):
        self.family, self.key, self.types = family, key, dict(types)

    def config_class(self, type_: str) -> type[DeviceConfig]:
        """The config model of ``type_``.

        Raises:
            ValueError: an unknown type (names the known ones).
        """
        if type_ not in self.types:
            raise ValueError(f"unknown {self.family} {type_!r} (known: {', '.join(sorted(self.types))})")
        module, cls = self.types[type_].split(":")
        return getattr(importlib.import_module(module), cls)

    def owners(self, key: str) -> list[str]:
        """Device types whose config has ``key``."""
        return [t for t in sorted(self.types) if key in self.config_class(t).model_fields]

    def parse(self, value: Any) -> DeviceConfig:
        """Validate a device config (a mapping with ``type``, or a bare type name).

        Raises:
            ValueError: one line per problem, naming the key, the value and the reason; a key that
                belongs to another device of the family says which one.
        """
        if isinstance(value, DeviceConfig):
            return value
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict) or "type" not in value:
            raise ValueError(f"a {self.family} is a mapping with a type (one of {', '.join(sorted(self.types))})")
        cls = self.config_class(str(value["type"]))
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    others = [t for t in self.owners(str(err["loc"][0])) if t != value["type"]]
                    where = f" (a key of {self.family} {', '.join(others)})" if others else " (typo?)"
                    lines.append(f"{loc}: not a key of {self.family} {value['type']}{where}")
                elif err["type"] == "missing":
                    lines.append(f"{loc}: required key is missing")
                else:
                    lines.append(f"{loc} = {err.get('input')!r}: {err['msg']}")
            raise ValueError("; ".join(lines)) from None

    def field(self, default: str, description: str = ""):
        """A params field holding this family's device config: ``(annotation, Field)`` for
        ``name: annotation = Field`` in a node's params model; ``default`` is a device type."""
        annotation = Annotated[DeviceConfig, BeforeValidator(self.parse)]
        return annotation, Field(
            default_factory=lambda: self.parse(default),
            description=description or f"the {self.family}: {{type: {'|'.join(sorted(self.types))}, ...its keys}}",
        )

    def missing_requirements(self, cfg: DeviceConfig) -> str | None:
        """Why the device cannot run on this install (its SDK is missing), or None."""
        missing = [m for m in cfg.requires if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        hint = f'pip install "robot-stack[{cfg.extra}]"' if cfg.extra else f"pip install {' '.join(missing)}"
        return f"{self.family} {cfg.type} needs {', '.join(missing)}: {hint}"


ARM_DRIVERS = DeviceRegistry(
    "arm driver",
    "driver",
    {
        "sim": "robot_stack.drivers.sim:SimArmConfig",
        "franka": "robot_stack.drivers.franka:FrankaConfig",
        "ur": "robot_stack.drivers.ur:UrConfig",
        "so101": "robot_stack.drivers.so101:So101Config",
        "ideal": "robot_stack.testing.arm:IdealArmConfig",  # in-process tests: tracks every command exactly
    },
)

CAMERA_DRIVERS = DeviceRegistry(
    "camera driver",
    "driver",
    {
        "synthetic": "robot_stack.drivers.camera:SyntheticCameraConfig",
        "sim": "robot_stack.drivers.sim:SimCameraConfig",
        "realsense": "robot_stack.drivers.realsense:RealSenseConfig",
        "opencv": "robot_stack.drivers.opencv_camera:OpenCVCameraConfig",
    },
)

TELEOP_DEVICES = DeviceRegistry(
    "teleop device",
    "device",
    {
        "keyboard": "robot_stack.teleop.keyboard:KeyboardConfig",
        "spacemouse": "robot_stack.teleop.spacemouse:SpaceMouseConfig",
        "gamepad": "robot_stack.teleop.gamepad:GamepadConfig",
        "scripted": "robot_stack.teleop.scripted:ScriptedConfig",
        "leader": "robot_stack.teleop.leader:LeaderConfig",
        "so101_leader": "robot_stack.teleop.leader:So101LeaderConfig",
    },
)

POLICY_BACKENDS = DeviceRegistry(
    "policy backend",
    "backend",
    {
        "goto": "robot_stack.policies.scripted:GoToConfig",
        "oracle": "robot_stack.policies.oracle:OracleConfig",
        "checkpoint": "robot_stack.policies.backends:CheckpointConfig",
        "onnx": "robot_stack.policies.backends:OnnxConfig",
        "ray_serve": "robot_stack.policies.ray_serve:RayServeConfig",
    },
)

#: node kind -> the registry of the devices it owns (``robot-stack kinds`` lists them)
FAMILIES: dict[str, DeviceRegistry] = {
    "arm": ARM_DRIVERS,
    "camera": CAMERA_DRIVERS,
    "teleop": TELEOP_DEVICES,
    "policy": POLICY_BACKENDS,
}
