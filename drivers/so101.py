"""SO-100 / SO-101 follower arm on Feetech STS3215 servos (:mod:`robot_stack.drivers.feetech`).

Joint space: five joint servos (ids 1-5: shoulder pan, shoulder lift, elbow flex, wrist flex,
wrist roll) and the jaw (id 6). A per-arm calibration maps servo positions to the robot model's
joints, ``q = sign * (raw - offset)`` (rad), and the jaw's raw range to an opening fraction, stored
under ``arms.<name>`` of the calibration file (the leader's ``JointMap`` format:
:func:`robot_stack.teleop.leader.save_joint_map` with ``section="arms"``, written by
``robot-stack calibrate servos``). Torque is switched on at start and off at stop (the arm then rests on its
own gearing, as LeRobot leaves it). Each :meth:`command` is one sync write of six goal positions;
each :meth:`read` one sync read. A bus failure is an :class:`ArmDriverError` (the arm node holds and
counts it as a driver fault). The kinematics come from the robot model ``so101`` (the published
joint origins, ``robot_stack/robots/so101.xml``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.drivers.arm import ArmDriver, ArmDriverError, JointReading
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import DeviceConfig, Check, servo_bus_check


class So101Driver(ArmDriver):
    """Args:
    bus: a :class:`~robot_stack.drivers.feetech.FeetechBus` on ids 1-5 + the jaw's.
    jmap: the arm's calibration (a :class:`~robot_stack.teleop.leader.JointMap`: offsets and
        signs of the five joints, the jaw's raw open/closed positions).
    lower, upper: (5,) joint limits from the robot model, rad.
    stroke_m: the jaw's opening at full stroke, m (for ``gripper_width``).
    """

    def __init__(self, bus, jmap, lower: np.ndarray, upper: np.ndarray, stroke_m: float):
        self.bus, self.jmap, self.stroke = bus, jmap, stroke_m
        self.n_joints = 5
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self._last: JointReading | None = None
        self._t_last = 0

    def _bus(self, what: str, fn, *a):
        from robot_stack.drivers.servo_bus import ServoBusError

        try:
            return fn(*a)
        except ServoBusError as e:
            raise ArmDriverError(f"SO-101 {what}: {e}") from e

    def start(self, timeout_s: float) -> JointReading:
        self._bus("torque on", self.bus.set_torque, True)
        return self.read()

    def read(self) -> JointReading:
        raw = self._bus("read", self.bus.read_positions)
        t = now_ns()
        q = self.jmap.joints(raw[:5])
        dq = np.zeros(5) if self._last is None else (q - self._last.q) / max(1e-3, (t - self._t_last) / 1e9)
        self._last = JointReading(t, q, dq, self.jmap.gripper(raw[5]) * self.stroke)
        self._t_last = t
        return self._last

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        q = np.asarray(q, float)
        if q.shape != (5,) or not np.all(np.isfinite(q)):
            raise ArmDriverError(f"SO-101 command of shape {q.shape} (finite: {np.all(np.isfinite(q))})")
        signs, offs = np.asarray(self.jmap.signs), np.asarray(self.jmap.offsets)
        raw = np.empty(6)
        raw[:5] = q / signs + offs
        g = float(np.clip(gripper_open, 0.0, 1.0))
        raw[5] = self.jmap.gripper_closed + g * (self.jmap.gripper_open - self.jmap.gripper_closed)
        self._bus("command", self.bus.write_goal_positions, raw)

    def stop(self) -> None:
        try:
            self.bus.set_torque(False)
        except Exception:  # noqa: BLE001 - best effort on the way out; the bus may be gone
            pass
        self.bus.close()


class So101Config(DeviceConfig):
    """arm driver ``so101``: an SO-100/SO-101 follower on Feetech STS3215 servos (extra ``feetech``)."""

    type: Literal["so101"] = "so101"
    extra = "feetech"
    requires = ("scservo_sdk",)
    port: str = Field("/dev/ttyACM0", description="serial port of the servo bus")
    ids: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6],
        min_length=6,
        max_length=6,
        description="servo ids: five joints in order, then the jaw",
    )
    baudrate: int = Field(1_000_000, description="bus baud rate (STS3215 default 1 Mbit/s)")
    calibration: str = Field(..., description="calibration file (arms.<name> section)")
    name: str = Field("so101_follower", description="name of its calibration entry")
    latency_timer_ms: float | None = Field(
        None, description="USB serial adapter latency timer to set, ms (None: leave it)"
    )

    def default_robot(self, config) -> str:
        return "so101"

    def doctor(self) -> list[Check]:
        return servo_bus_check("SO-101", self.port, self.ids, lambda: self._open_bus())

    def _open_bus(self):
        from robot_stack.drivers.feetech import FeetechBus

        return FeetechBus(self.port, self.ids, self.baudrate, self.latency_timer_ms)

    def build(self, ctx, params) -> So101Driver:
        from robot_stack.control.robot_model import RobotModel
        from robot_stack.drivers.feetech import FeetechBus, FeetechError

        m = RobotModel.load(params.robot_name(ctx.config))
        from robot_stack.teleop.base import TeleopError
        from robot_stack.teleop.leader import load_joint_map

        try:
            jmap = load_joint_map(self.calibration, self.name, section="arms")
        except TeleopError as e:
            raise ArmDriverError(str(e)) from None
        try:
            bus = FeetechBus(self.port, self.ids, self.baudrate, self.latency_timer_ms)
        except FeetechError as e:
            raise ArmDriverError(str(e)) from e
        return So101Driver(bus, jmap, m.lower, m.upper, m.gripper_stroke_m)
