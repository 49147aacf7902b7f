"""Leader-arm teleop (joint space): a small kinematically similar arm the operator moves by hand.

The bus driver (Dynamixel/Feetech) reports raw joint positions; :class:`JointMap` turns them into
follower joint angles (per-joint sign and offset, gripper range), stored per device. Before it
drives the follower, :class:`LeaderArm` refuses to engage while leader and follower are far apart
(the operator first matches the pose), then ramps the command from the follower's pose to the
leader's over ``ramp_s`` so engaging never jumps. Commands are ``joint`` teleop commands; the
controller sends them to the arm node as joint-space waypoints (same safety path).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
import numpy as np

from robot_stack.runtime.devices import Check, servo_bus_check
from robot_stack.comm.messages import RobotState, TeleopCommand

from .base import TeleopConfig, TeleopDevice, TeleopError, TeleopInputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointMap:
    """Raw leader readings -> follower joints: q = sign * (raw - offset) (rad); gripper fraction from
    the raw gripper reading between ``gripper_closed`` and ``gripper_open``."""

    offsets: tuple[float, ...]
    signs: tuple[float, ...]
    gripper_open: float = 1.0
    gripper_closed: float = 0.0

    def joints(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, float)
        if raw.shape != (len(self.offsets),):
            raise TeleopError(
                f"leader reports {raw.shape[0] if raw.ndim else 0} joints, calibration has {len(self.offsets)}"
            )
        return np.asarray(self.signs) * (raw - np.asarray(self.offsets))

    def gripper(self, raw: float) -> float:
        span = self.gripper_open - self.gripper_closed
        if span == 0:
            raise TeleopError("leader gripper calibration has open == closed")
        return float(np.clip((raw - self.gripper_closed) / span, 0, 1))


class LeaderArm:
    """Engage check and ramp-in for a joint-space leader.

    Args:
        max_engage_error: largest |leader - follower| joint difference (rad) allowed to engage.
        ramp_s: time to blend from the follower's pose to the leader's after engaging, s.
    """

    def __init__(self, max_engage_error: float = 0.2, ramp_s: float = 1.0):
        self.max_err, self.ramp_s = max_engage_error, ramp_s
        self.t0: float | None = None
        self.q_start: np.ndarray | None = None

    @property
    def engaged(self) -> bool:
        return self.t0 is not None

    def engage(self, q_leader: np.ndarray, q_follower: np.ndarray, t: float) -> None:
        """Engage at time ``t`` (s).

        Raises:
            TeleopError: a joint differs by more than ``max_engage_error``; names it and both values.
        """
        ql, qf = np.asarray(q_leader, float), np.asarray(q_follower, float)
        if ql.shape != qf.shape:
            raise TeleopError(f"leader has {ql.shape[0]} joints, follower {qf.shape[0]}")
        err = np.abs(ql - qf)
        j = int(np.argmax(err))
        if err[j] > self.max_err:
            raise TeleopError(
                f"leader and follower too far apart to engage: joint {j + 1} leader {ql[j]:+.3f} rad, "
                f"follower {qf[j]:+.3f} rad (max {self.max_err:.3f}); match the follower's pose first"
            )
        self.t0, self.q_start = t, qf.copy()

    def disengage(self) -> None:
        self.t0 = self.q_start = None

    def command(
        self, q_leader: np.ndarray, gripper: float, t: float, buttons: list[str] | None = None
    ) -> TeleopCommand:
        """The joint command at time ``t``: blended from the follower's pose during the ramp.

        Raises:
            TeleopError: not engaged.
        """
        if self.t0 is None:
            raise TeleopError("leader arm is not engaged")
        a = 1.0 if self.ramp_s <= 0 else min(1.0, max(0.0, (t - self.t0) / self.ramp_s))
        q = self.q_start + a * (np.asarray(q_leader, float) - self.q_start)
        return TeleopCommand(kind="joint", value=q, gripper=gripper, buttons=buttons or [])


def save_joint_map(path, device: str, jm: JointMap, section: str = "leaders", ranges=None) -> None:
    """Store a servo arm's calibration under ``<section>.<device>`` of a calibration file (atomic
    YAML): ``leaders`` for teleop leaders, ``arms`` for follower arm drivers (SO-101); ``ranges``:
    optional (n [+1], 2) raw [min, max] positions, rad (``robot-stack calibrate servos``)."""
    from robot_stack.calibration import store

    if section not in ("leaders", "arms"):
        raise ValueError(f"section must be leaders or arms, got {section!r}")
    values = {
        "offsets": [float(v) for v in jm.offsets],
        "signs": [float(v) for v in jm.signs],
        "gripper_open": float(jm.gripper_open),
        "gripper_closed": float(jm.gripper_closed),
    }
    if ranges is not None:
        values["ranges"] = np.round(np.asarray(ranges, float), 5).tolist()
    store.update(path, section, device, values)


def load_joint_map(path, device: str, section: str = "leaders") -> JointMap:
    """The calibration of ``<section>.<device>``.

    Raises:
        TeleopError: the file has none for this device.
    """
    from robot_stack.calibration import store

    d = (store.load(path).get(section) or {}).get(device)
    if not d:
        raise TeleopError(
            f"{path} has no calibration for {section}.{device}: calibrate it first (robot-stack calibrate servos)"
        )
    return JointMap(tuple(d["offsets"]), tuple(d["signs"]), d.get("gripper_open", 1.0), d.get("gripper_closed", 0.0))


def calibrate_joint_map(
    raw_at_pose: np.ndarray, q_pose: np.ndarray, signs, gripper_open: float = 1.0, gripper_closed: float = 0.0
) -> JointMap:
    """Offsets from one reading of the leader held in a known follower pose ``q_pose`` (rad):
    q = sign * (raw - offset)  =>  offset = raw - q / sign."""
    raw, q, sg = (np.asarray(v, float) for v in (raw_at_pose, q_pose, signs))
    if not (raw.shape == q.shape == sg.shape) or np.any(np.abs(sg) != 1):
        raise TeleopError("calibration needs one raw reading, one pose and one sign (+1/-1) per joint")
    return JointMap(tuple(raw - q / sg), tuple(sg), gripper_open, gripper_closed)


class LeaderDevice(TeleopDevice):
    """A leader arm on its bus as a teleop device: raw positions -> follower joints (:class:`JointMap`),
    engaged against the follower's measured joints (``robot/state``) by :class:`LeaderArm`.

    A failed bus read skips one period; reads failing for 0.5 s in a row disengage (the operator
    then matches the follower's pose again to re-engage).

    Args:
        bus: the servo bus (``read_positions() -> (n [+1],) raw``, ``close()``).
        jmap: the leader's calibration.
        n_joints: joint servos on the bus (a gripper servo, when present, is read after them).
        has_gripper: whether the last servo is the gripper trigger.
        max_engage_error: rad; ramp_s: s (see :class:`LeaderArm`).
        rate_hz: the teleop rate (for the 0.5 s failure window).
    """

    def __init__(
        self,
        bus,
        jmap: JointMap,
        n_joints: int,
        has_gripper: bool,
        max_engage_error: float,
        ramp_s: float,
        rate_hz: float,
    ):
        self.bus, self.jmap, self.n, self.has_gripper = bus, jmap, n_joints, has_gripper
        self.leader = LeaderArm(max_engage_error, ramp_s)
        self.ramp_s, self.rate_hz = ramp_s, rate_hz
        self.refusals = self.bus_errors = self.bus_errors_run = 0

    def poll(self, inputs: TeleopInputs) -> TeleopCommand | None:
        from robot_stack.drivers.servo_bus import ServoBusError

        try:
            raw = self.bus.read_positions()
        except ServoBusError as e:  # one failed read skips a cycle; a failing bus disengages
            self.bus_errors += 1
            self.bus_errors_run += 1
            if self.bus_errors_run == 1 or self.bus_errors_run % 50 == 0:
                log.warning("leader read failed (%d in a row): %s", self.bus_errors_run, e)
            if self.bus_errors_run >= max(3, int(0.5 * self.rate_hz)) and self.leader.engaged:
                self.leader.disengage()
                log.error("leader bus failing for 0.5 s: disengaged (match the follower's pose to re-engage)")
            return None
        self.bus_errors_run = 0
        q = self.jmap.joints(raw[: self.n])
        g = self.jmap.gripper(raw[self.n]) if self.has_gripper else 1.0
        if not self.leader.engaged:
            st = inputs.latest(RobotState.TOPIC)
            if st is None:
                return None
            try:
                self.leader.engage(q, np.asarray(st.q), inputs.t)
                log.info("leader engaged; ramping in over %.1f s", self.ramp_s)
            except TeleopError as e:
                self.refusals += 1
                if self.refusals == 1 or self.refusals % int(5 * self.rate_hz) == 0:
                    log.warning("%s", e)
                return None
        return self.leader.command(q, g, inputs.t)

    def metrics(self) -> dict[str, float]:
        return {
            "engaged": float(self.leader.engaged),
            "engage_refusals": float(self.refusals),
            "bus_errors": float(self.bus_errors),
        }

    def close(self) -> None:
        if hasattr(self.bus, "close"):
            self.bus.close()


class LeaderConfig(TeleopConfig):
    """teleop device ``leader``: a Dynamixel leader arm (Protocol 2.0, extra ``dynamixel``)."""

    type: Literal["leader"] = "leader"
    extra = "dynamixel"
    requires = ("dynamixel_sdk",)
    port: str = Field("/dev/ttyUSB0", description="serial port of the bus")
    ids: list[int] = Field(default_factory=lambda: list(range(1, 8)), description="joint servo ids, in order")
    gripper_id: int | None = Field(None, description="servo id of the gripper trigger")
    baudrate: int = Field(1_000_000, description="bus baud rate")
    calibration: str = Field(..., description="calibration file (leaders.<name> section)")
    name: str = Field("leader", description="name of its calibration entry")
    max_engage_error: float = Field(0.2, gt=0, description="max joint difference to engage, rad")
    ramp_s: float = Field(1.0, ge=0, description="blend time after engaging, s")
    latency_timer_ms: float | None = Field(
        None, description="USB serial adapter latency timer to set, ms (None: leave it)"
    )

    def inputs(self, params) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {params.arm: ("arm", (RobotState.TOPIC,))}  # the engage check reads the follower's joints

    def _bus(self, ids: list[int]):
        from robot_stack.drivers.dynamixel import DynamixelBus

        return DynamixelBus(self.port, ids, self.baudrate, self.latency_timer_ms)

    def doctor(self) -> list[Check]:
        ids = list(self.ids) + ([self.gripper_id] if self.gripper_id is not None else [])
        label = "SO-101 leader" if self.type == "so101_leader" else "Dynamixel leader"
        return servo_bus_check(label, self.port, ids, lambda: self._bus(ids))

    def build(self, ctx, params) -> LeaderDevice:
        """The leader on its bus (torque off: the operator moves it by hand)."""
        jmap = load_joint_map(self.calibration, self.name)
        ids = list(self.ids) + ([self.gripper_id] if self.gripper_id is not None else [])
        bus = self._bus(ids)
        bus.set_torque(False)
        return LeaderDevice(
            bus, jmap, len(self.ids), self.gripper_id is not None, self.max_engage_error, self.ramp_s, params.rate_hz
        )


class So101LeaderConfig(LeaderConfig):
    """teleop device ``so101_leader``: an SO-100/SO-101 leader arm on Feetech STS3215 servos (extra
    ``feetech``): five joint servos (shoulder pan, shoulder lift, elbow flex, wrist flex, wrist roll)
    and the gripper trigger, ids 1-6 as LeRobot's SO-101 assembly numbers them. Calibrated and
    engaged like the Dynamixel leader (:class:`JointMap`, ``leaders.<name>`` in the calibration file)."""

    type: Literal["so101_leader"] = "so101_leader"
    extra = "feetech"
    requires = ("scservo_sdk",)
    port: str = Field("/dev/ttyACM0", description="serial port of the bus (the SO-101's USB servo board)")
    ids: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], description="joint servo ids, in order")
    gripper_id: int | None = Field(6, description="servo id of the gripper trigger")
    name: str = Field("so101_leader", description="name of its calibration entry")

    def _bus(self, ids: list[int]):
        from robot_stack.drivers.feetech import FeetechBus

        return FeetechBus(self.port, ids, self.baudrate, self.latency_timer_ms)
