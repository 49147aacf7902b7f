"""Typed message schemas.

Every message is a dataclass with a schema name and version. Fields are declared with
:func:`array`, :func:`array_dict` or :func:`scalar`; the codec (``robot_stack.comm.codec``) uses these
declarations to validate every message before it is sent and after it is received.

Conventions (see docs/design.md):

- ``stamp_ns``: time on the stack clock (``time.monotonic_ns``) the message is *about* (a camera
  frame's capture time, a robot state's measurement time), ns.
- ``seq`` and ``source`` are filled in by the publisher.
- Poses are ``[x, y, z, qx, qy, qz, qw]`` (m, unit quaternion scalar-last as scipy uses) in the
  robot base frame unless a field says otherwise.
- Joint values are rad (revolute) or m (prismatic); velocities per second.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# dtypes allowed on the wire (little-endian explicit; '|' for single byte)
DTYPE_WHITELIST: frozenset[str] = frozenset(
    {"|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<i8", "<u8", "<f4", "<f8"}
)
UINT8, UINT16, INT64 = ("|u1",), ("<u2",), ("<i8",)
FLOAT = ("<f4", "<f8")
FLOAT64 = ("<f8",)

MAX_STR_LEN = 4096
MAX_LIST_LEN = 256
MAX_DICT_LEN = 256
MAX_DICT_ARRAYS = 32


class SchemaError(RobotStackError, ValueError):
    """A message does not satisfy its schema (raised on encode; wrapped in DecodeError on decode)."""


@dataclass(frozen=True)
class ArraySpec:
    """Declared array field: allowed dtypes and shape (None = any length in that axis)."""

    dtypes: tuple[str, ...]
    shape: tuple[int | None, ...]
    optional: bool = False


@dataclass(frozen=True)
class ArrayDictSpec:
    """A dict ``str -> ndarray`` (observation windows with per-key arrays)."""

    max_ndim: int = 5


@dataclass(frozen=True)
class ScalarSpec:
    """Declared scalar field: one of int, float, str, bool, list[str], dict[str, float]."""

    kind: str  # "int" | "float" | "str" | "bool" | "list_str" | "dict_float"
    choices: tuple[str, ...] | None = None


def array(dtypes: tuple[str, ...], shape: tuple[int | None, ...], optional: bool = False):
    """Declare an array field (default None when optional)."""
    spec = ArraySpec(tuple(dtypes), tuple(shape), optional)
    if optional:
        return dataclasses.field(default=None, metadata={"spec": spec})
    return dataclasses.field(metadata={"spec": spec})


def array_dict():
    """Declare a dict-of-arrays field."""
    return dataclasses.field(default_factory=dict, metadata={"spec": ArrayDictSpec()})


def scalar(kind: str, default: Any = dataclasses.MISSING, choices: tuple[str, ...] | None = None):
    """Declare a scalar field of ``kind`` (see :class:`ScalarSpec`)."""
    spec = ScalarSpec(kind, choices)
    if kind in ("list_str",) and default is dataclasses.MISSING:
        return dataclasses.field(default_factory=list, metadata={"spec": spec})
    if kind in ("dict_float",) and default is dataclasses.MISSING:
        return dataclasses.field(default_factory=dict, metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


REGISTRY: dict[str, type[Message]] = {}
_SPECS: dict[type, dict] = {}
_DEFAULTS: dict[type, dict] = {}


@dataclass(kw_only=True)
class Message:
    """Base of all messages. Subclasses set ``SCHEMA`` and ``VERSION`` and are auto-registered.

    Attributes:
        stamp_ns: the time the message is about on the stack clock, ns.
        seq: publisher sequence number (set by the transport).
        source: publishing node name (set by the transport).
    """

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    #: the topic this message travels on; one ending in "/" is a prefix completed by a device or
    #: node name (``CameraFrame.topic("wrist") == "camera/wrist"``); "" for request/reply payloads
    TOPIC: ClassVar[str] = ""

    stamp_ns: int = scalar("int", 0)
    seq: int = scalar("int", 0)
    source: str = scalar("str", "")

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.SCHEMA:
            if cls.SCHEMA in REGISTRY and REGISTRY[cls.SCHEMA] is not cls:
                raise RuntimeError(f"duplicate message schema {cls.SCHEMA!r}")
            REGISTRY[cls.SCHEMA] = cls

    @classmethod
    def topic(cls, name: str = "") -> str:
        """The topic of this schema: ``TOPIC``, completed by ``name`` when ``TOPIC`` is a prefix.

        Raises:
            ValueError: a prefix topic without a name, or a name for a fixed topic.
        """
        if cls.TOPIC.endswith("/") != bool(name):
            raise ValueError(f"{cls.__name__} topic {cls.TOPIC!r} " + ("needs a name" if not name else "takes no name"))
        return cls.TOPIC + name

    def check(self) -> None:
        """Cross-field consistency checks; subclasses extend. Raises SchemaError."""

    @classmethod
    def specs(cls) -> dict[str, ArraySpec | ArrayDictSpec | ScalarSpec]:
        """Field name -> declared spec, in declaration order (computed once per class)."""
        cached = _SPECS.get(cls)
        if cached is None:
            cached = _SPECS[cls] = {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}
        return cached

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> Message:
        """Build a message from already-validated field values without running ``__init__``
        (the codec's hot path); absent fields take their declared defaults."""
        defaults = _DEFAULTS.get(cls)
        if defaults is None:
            defaults = _DEFAULTS[cls] = {
                f.name: (False, f.default) if f.default is not dataclasses.MISSING else (True, f.default_factory)
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            }
        obj = cls.__new__(cls)
        d = obj.__dict__
        for name, (is_factory, default) in defaults.items():
            if name not in values:
                d[name] = default() if is_factory else default
        missing = cls.specs().keys() - values.keys() - defaults.keys()
        if missing:
            raise SchemaError(f"missing fields {sorted(missing)}")
        d.update(values)
        return obj


# --------------------------------------------------------------------------------------------
# validation shared by encode and decode


def validate_scalar(name: str, spec: ScalarSpec, value: Any) -> Any:
    """Validate and normalize a scalar; return the normalized value or raise SchemaError."""
    k = spec.kind
    if k == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SchemaError(f"field {name!r}: expected int, got {type(value).__name__}")
        value = int(value)
        if not -(2**63) <= value < 2**63:
            raise SchemaError(f"field {name!r}: int out of int64 range")
        return value
    if k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise SchemaError(f"field {name!r}: expected float, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise SchemaError(f"field {name!r}: non-finite float {value!r}")
        return value
    if k == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise SchemaError(f"field {name!r}: expected bool, got {type(value).__name__}")
        return bool(value)
    if k == "str":
        if not isinstance(value, str):
            raise SchemaError(f"field {name!r}: expected str, got {type(value).__name__}")
        if len(value) > MAX_STR_LEN:
            raise SchemaError(f"field {name!r}: string longer than {MAX_STR_LEN}")
        if spec.choices is not None and value not in spec.choices:
            raise SchemaError(f"field {name!r}: {value!r} is not one of {list(spec.choices)}")
        return value
    if k == "list_str":
        if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST_LEN:
            raise SchemaError(f"field {name!r}: expected list of at most {MAX_LIST_LEN} str")
        out = []
        for v in value:
            if not isinstance(v, str) or len(v) > MAX_STR_LEN:
                raise SchemaError(f"field {name!r}: list items must be str")
            if spec.choices is not None and v not in spec.choices:
                raise SchemaError(f"field {name!r}: {v!r} is not one of {list(spec.choices)}")
            out.append(v)
        return out
    if k == "dict_float":
        if not isinstance(value, dict) or len(value) > MAX_DICT_LEN:
            raise SchemaError(f"field {name!r}: expected dict of at most {MAX_DICT_LEN} str->float")
        out_d = {}
        for kk, vv in value.items():
            if not isinstance(kk, str) or len(kk) > 256:
                raise SchemaError(f"field {name!r}: dict keys must be str")
            if isinstance(vv, bool) or not isinstance(vv, (int, float, np.integer, np.floating)):
                raise SchemaError(f"field {name!r}[{kk!r}]: expected number")
            out_d[kk] = float(vv)
        return out_d
    raise SchemaError(f"field {name!r}: unknown scalar kind {k!r}")  # pragma: no cover


def validate_array(name: str, spec: ArraySpec, value: Any) -> np.ndarray | None:
    """Check an array field against its declared dtype set and shape. Raises SchemaError."""
    if value is None:
        if spec.optional:
            return None
        raise SchemaError(f"field {name!r}: required array missing")
    if not isinstance(value, np.ndarray):
        raise SchemaError(f"field {name!r}: expected numpy array, got {type(value).__name__}")
    if value.dtype.str not in spec.dtypes:
        raise SchemaError(f"field {name!r}: dtype {value.dtype.str} not in {list(spec.dtypes)}")
    if value.ndim != len(spec.shape):
        raise SchemaError(f"field {name!r}: expected {len(spec.shape)}-D array, got shape {value.shape}")
    for ax, (got, want) in enumerate(zip(value.shape, spec.shape)):
        if want is not None and got != want:
            raise SchemaError(f"field {name!r}: axis {ax} has length {got}, expected {want}")
    return value


# --------------------------------------------------------------------------------------------
# schemas


@dataclass(kw_only=True)
class CameraFrame(Message):
    """One RGB-D (or RGB) camera frame.

    Attributes:
        stamp_ns: capture time on the stack clock (device stamp mapped to host, or receive time
            minus calibrated latency), ns.
        camera_id: camera name in the setup config.
        frame_index: device frame counter.
        device_stamp_ns: the frame's capture time on the device's own clock (mid-exposure where
            the device reports it), ns; 0 for a camera without a device clock.
        color: (H, W, 3) uint8 RGB.
        depth: (H, W) uint16 depth aligned to the color image, or None; metres = depth * depth_scale.
        depth_scale: metres per depth unit (RealSense D4xx: 0.001); 0.0 when there is no depth.
        K: (3, 3) float64 color intrinsics (pixels), pinhole model.
    """

    SCHEMA: ClassVar[str] = "camera_frame"
    TOPIC: ClassVar[str] = "camera/"
    camera_id: str = scalar("str", "")
    frame_index: int = scalar("int", 0)
    device_stamp_ns: int = scalar("int", 0)
    color: np.ndarray = array(UINT8, (None, None, 3))
    depth: np.ndarray | None = array(UINT16, (None, None), optional=True)
    depth_scale: float = scalar("float", 0.0)
    K: np.ndarray = array(FLOAT64, (3, 3))

    def check(self) -> None:
        if self.depth is not None and self.depth.shape != self.color.shape[:2]:
            raise SchemaError(f"depth shape {self.depth.shape} does not match color {self.color.shape[:2]}")
        if self.depth is not None and self.depth_scale <= 0:
            raise SchemaError("depth_scale must be > 0 when depth is present")


@dataclass(kw_only=True)
class RobotState(Message):
    """Measured arm state.

    Attributes:
        q: (n,) float64 joint positions, rad.
        dq: (n,) float64 joint velocities, rad/s.
        ee_pose: (7,) float64 end-effector pose in the base frame, [x y z qx qy qz qw] (m).
        gripper_width: finger opening, m.
        mode: arm node mode ("hold", "track", "estop", "init").
        safety_events: safety refusals and clamps since start (details in the arm heartbeat).
        schedules_refused: schedules the arm node refused since start, any sender (the
            controller's refusal watch, :mod:`robot_stack.control.refusals`).
        wrench: (6,) float64 external wrench on the tool at the TCP, base frame, [fx fy fz] N and
            [tx ty tz] N m: what the environment exerts on the tool (a wrist F/T sensor, Franka's
            ``O_F_ext_hat_K``, UR's ``actual_TCP_force``); None when the arm measures none.
        q_plan: (n,) float64 joints where the arm node's commands are headed, rad: its commanded
            joints a short look-ahead ahead at their commanded velocity (the other arms'
            collision checks use it beside ``q``); None from a sender that does not say.
    """

    SCHEMA: ClassVar[str] = "robot_state"
    TOPIC: ClassVar[str] = "robot/state"
    q: np.ndarray = array(FLOAT64, (None,))
    dq: np.ndarray = array(FLOAT64, (None,))
    ee_pose: np.ndarray = array(FLOAT64, (7,))
    gripper_width: float = scalar("float", 0.0)
    mode: str = scalar("str", "hold", choices=("init", "hold", "track", "estop"))
    safety_events: int = scalar("int", 0)
    schedules_refused: int = scalar("int", 0)
    wrench: np.ndarray | None = array(FLOAT64, (6,), optional=True)
    q_plan: np.ndarray | None = array(FLOAT64, (None,), optional=True)

    def check(self) -> None:
        if self.wrench is not None and not np.all(np.isfinite(self.wrench)):
            raise SchemaError("wrench has non-finite values")
        if self.q_plan is not None and (self.q_plan.shape != self.q.shape or not np.all(np.isfinite(self.q_plan))):
            raise SchemaError(f"q_plan of shape {self.q_plan.shape} for q of shape {self.q.shape}, or not finite")
        if self.dq.shape != self.q.shape:
            raise SchemaError(f"dq shape {self.dq.shape} != q shape {self.q.shape}")


TELEOP_BUTTONS = (
    "episode_start",
    "episode_stop",
    "episode_discard",
    "quit",
    "intervene",
    "release",
    "estop",
    "estop_release",
    "switch_arm",
)


@dataclass(kw_only=True)
class TeleopCommand(Message):
    """A teleoperation command.

    Attributes:
        kind: "ee_delta" (value (6,): dx dy dz in m, rotation vector in rad, base frame),
            "ee_absolute" (value (7,) pose in the base frame) or "joint" (value (n,) rad).
        value: float64 command vector, shape per ``kind``.
        gripper: commanded gripper opening in [0, 1] (0 closed, 1 open).
        buttons: button events in this command (see ``TELEOP_BUTTONS``).
        arm: the arm node it moves, for a controller driving several arms ("": its first arm).
    """

    SCHEMA: ClassVar[str] = "teleop_command"
    TOPIC: ClassVar[str] = "teleop/command"
    kind: str = scalar("str", "ee_delta", choices=("ee_delta", "ee_absolute", "joint"))
    value: np.ndarray = array(FLOAT64, (None,))
    gripper: float = scalar("float", 1.0)
    buttons: list[str] = scalar("list_str", choices=TELEOP_BUTTONS)
    arm: str = scalar("str", "")

    def check(self) -> None:
        want = {"ee_delta": 6, "ee_absolute": 7}.get(self.kind)
        if want is not None and self.value.shape != (want,):
            raise SchemaError(f"teleop kind {self.kind!r} needs value shape ({want},), got {self.value.shape}")


@dataclass(kw_only=True)
class ObservationWindow(Message):
    """An inference request: the last To observations per key.

    Only durations cross hosts, so frames are described by their age at send time.

    Attributes:
        request_id: controller-side id echoed in the reply.
        obs: key -> array with a leading To axis (e.g. "cam_scene.color": (To, H, W, 3) uint8,
            "state": (To, n) float32).
        obs_age_ns: (To,) int64 age of each observation step when the request was sent, ns.
        committed_prefix: (k, action_dim) float32 actions already planned for the next chunk's
            indices 0..k-1 (RTC: the previous chunk over the overlap), or None.
        prefix_frozen: d, how many of ``committed_prefix`` the arm executes whatever the new chunk
            says (the rest is soft guidance); -1: all of them.
        prompt: the episode's task text, for a language-conditioned policy ("" for none; sent as
            openpi's ``prompt``).
    """

    SCHEMA: ClassVar[str] = "observation_window"
    request_id: int = scalar("int", 0)
    obs: dict[str, np.ndarray] = array_dict()
    obs_age_ns: np.ndarray = array(INT64, (None,))
    committed_prefix: np.ndarray | None = array(FLOAT, (None, None), optional=True)
    prefix_frozen: int = scalar("int", -1)
    prompt: str = scalar("str", "")

    def check(self) -> None:
        n = 0 if self.committed_prefix is None else len(self.committed_prefix)
        if self.prefix_frozen < -1 or self.prefix_frozen > n:
            raise SchemaError(f"prefix_frozen {self.prefix_frozen} outside -1..{n} (the prefix has {n} actions)")


@dataclass(kw_only=True)
class ActionChunk(Message):
    """A policy's reply: H actions.

    Action i is meant for ``t_obs + (i + offset) * dt`` where t_obs is the newest observation's
    capture time (known to the controller by ``request_id``).

    Attributes:
        request_id: id of the observation window this answers.
        actions: (H, action_dim) float32/float64.
        dt: control period, s.
        offset: step offset of action 0.
        inference_ns: time the policy spent, ns.
        prefix_frozen: d, the committed actions the chunk follows (RTC; a training-time-RTC policy
            may condition on fewer than it was sent); -1: no prefix.
    """

    SCHEMA: ClassVar[str] = "action_chunk"
    request_id: int = scalar("int", 0)
    actions: np.ndarray = array(FLOAT, (None, None))
    dt: float = scalar("float", 0.1)
    offset: int = scalar("int", 0)
    inference_ns: int = scalar("int", 0)
    prefix_frozen: int = scalar("int", -1)

    def check(self) -> None:
        if self.dt <= 0:
            raise SchemaError(f"dt must be > 0, got {self.dt}")


@dataclass(kw_only=True)
class WaypointSchedule(Message):
    """Timed waypoints for the arm node (lossless channel).

    Attributes:
        stamps_ns: (N,) int64 strictly increasing target times on the stack clock, ns.
        positions: (N, D) float64 targets: joint positions (rad) for space "joint", or poses
            [x y z qx qy qz qw] in the base frame for space "ee".
        space: "joint" or "ee".
        gripper: (N,) float64 gripper opening targets in [0, 1], or None to leave it.
        origin: action source ("policy", "teleop", "cli", ...).
        arm: the arm node it is for, on ``controller/action`` of a multi-arm controller ("" for
            a one-arm controller).
    """

    SCHEMA: ClassVar[str] = "waypoint_schedule"
    TOPIC: ClassVar[str] = "waypoints"
    #: the controller publishes every schedule it sends to the arm here (recorded as the episode's actions)
    EXECUTED_TOPIC: ClassVar[str] = "controller/action"
    stamps_ns: np.ndarray = array(INT64, (None,))
    positions: np.ndarray = array(FLOAT64, (None, None))
    space: str = scalar("str", "joint", choices=("joint", "ee"))
    gripper: np.ndarray | None = array(FLOAT64, (None,), optional=True)
    origin: str = scalar("str", "")
    arm: str = scalar("str", "")

    def check(self) -> None:
        n = self.stamps_ns.shape[0]
        if self.positions.shape[0] != n:
            raise SchemaError(f"{self.positions.shape[0]} positions for {n} stamps")
        if self.gripper is not None and self.gripper.shape[0] != n:
            raise SchemaError(f"{self.gripper.shape[0]} gripper targets for {n} stamps")
        if n > 1 and not np.all(np.diff(self.stamps_ns) > 0):
            raise SchemaError("waypoint stamps must be strictly increasing")
        if self.space == "ee" and self.positions.shape[1] != 7:
            raise SchemaError("ee waypoints need 7 values [x y z qx qy qz qw]")


@dataclass(kw_only=True)
class EpisodeEvent(Message):
    """Episode control (lossless channel): start, stop (save), discard, reset, quit."""

    SCHEMA: ClassVar[str] = "episode_event"
    TOPIC: ClassVar[str] = "event"
    kind: str = scalar("str", "start", choices=("start", "stop", "discard", "reset", "quit"))
    episode: int = scalar("int", 0)
    task: str = scalar("str", "")


@dataclass(kw_only=True)
class ArmControl(Message):
    """Arm-node control (lossless channel): "estop" stops at once, "release" clears an e-stop,
    "hold" drops the current schedule and holds, "recover" asks the driver to recover from a
    robot fault (a UR protective stop: unlock and restart its control script)."""

    SCHEMA: ClassVar[str] = "arm_control"
    TOPIC: ClassVar[str] = "control"
    kind: str = scalar("str", "hold", choices=("estop", "release", "hold", "recover"))
    reason: str = scalar("str", "")


@dataclass(kw_only=True)
class Heartbeat(Message):
    """Liveness and metrics of a node.

    Attributes:
        node: node name.
        state: lifecycle state ("configuring", "running", "stopping").
        metrics: flat str -> float metrics (loop jitter, counters).
    """

    SCHEMA: ClassVar[str] = "heartbeat"
    TOPIC: ClassVar[str] = "heartbeat/"
    node: str = scalar("str", "")
    state: str = scalar("str", "running")
    metrics: dict[str, float] = scalar("dict_float")


@dataclass(kw_only=True)
class SpecRequest(Message):
    """Ask a policy server for its observation/action spec; the answer is a :class:`PolicySpec`."""

    SCHEMA: ClassVar[str] = "spec_request"
    request_id: int = scalar("int", 0)


@dataclass(kw_only=True)
class PolicySpec(Message):
    """What a policy consumes and produces (its ``PolicyMetadata``), so a controller can check its
    setup against it at start-up (compare openpi's server metadata on connect).

    Attributes:
        obs_keys: the observation keys, in order.
        obs_shapes: key -> (ndim,) int64, the shape of one step (without the To axis).
        obs_dtypes: numpy dtype strings, aligned with ``obs_keys``.
        obs_horizon: To; horizon: H; action_dim: D; action_space: the actions' meaning.
        dt: control period the policy was trained at, s; offset: step of action 0 after the newest
            observation; supports_prefix: accepts an RTC prefix.
        points: camera id -> (8,) float64 ``[lo(3) hi(3) n_points stride]``: how the controller
            builds that camera's ``<camera>.points`` cloud
            (:class:`robot_stack.control.features.PointCloudSpec`); empty for image policies.
        action_names: the name of each action dimension in order (empty: none given).
    """

    SCHEMA: ClassVar[str] = "policy_spec"
    request_id: int = scalar("int", 0)
    obs_keys: list[str] = scalar("list_str")
    obs_shapes: dict = array_dict()
    obs_dtypes: list[str] = scalar("list_str")
    obs_horizon: int = scalar("int", 1)
    horizon: int = scalar("int", 1)
    action_dim: int = scalar("int", 1)
    action_space: str = scalar("str", "")
    dt: float = scalar("float", 0.1)
    offset: int = scalar("int", 0)
    supports_prefix: bool = scalar("bool", False)
    points: dict = array_dict()
    action_names: list[str] = scalar("list_str")

    def check(self) -> None:
        if self.action_names and len(self.action_names) != self.action_dim:
            raise SchemaError(f"{len(self.action_names)} action names for {self.action_dim} action dimensions")


@dataclass(kw_only=True)
class ErrorReply(Message):
    """A request/reply error: the request was rejected with ``code`` and a readable ``reason``."""

    SCHEMA: ClassVar[str] = "error_reply"
    request_id: int = scalar("int", 0)
    code: str = scalar("str", "bad_request")
    reason: str = scalar("str", "")
