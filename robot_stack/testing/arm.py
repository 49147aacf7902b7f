"""An ideal arm for in-process tests: it is wherever it was last commanded.

``driver: {type: ideal, robot: panda_robotiq}`` in an arm node's params. The reading is the last
command (perfect tracking, zero latency), stamped on the stack's clock, so a test on a
:class:`~robot_stack.testing.FakeClock` sees exactly what the servo core sent. Fault injection:
:attr:`IdealArmDriver.fault` set to a reason makes every read raise
:class:`~robot_stack.drivers.arm.ArmDriverError` until it is cleared (as a reflex or a lost
connection does on hardware).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from robot_stack.drivers.arm import ArmDriver, ArmDriverError, JointReading
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import DeviceConfig


class IdealArmDriver(ArmDriver):
    """Perfect-tracking arm (see the module docstring).

    Args:
        robot: robot model name (its joint count, limits, home posture and gripper stroke).
        q0: (n,) start posture, rad; None: the model's home.

    Attributes:
        commands: every (stamp_ns, q, gripper_open) commanded, in order.
        fault: a reason, or None; while set, :meth:`read` raises ArmDriverError.
        recoveries: how many times :meth:`recover` was called.
    """

    can_recover = True

    def __init__(self, robot: str, q0: list[float] | None = None):
        from robot_stack.control.robot_model import RobotModel

        model = RobotModel.load(robot)
        self.n_joints = model.n_joints
        self.lower, self.upper = model.lower.copy(), model.upper.copy()
        self.stroke = model.gripper_stroke_m
        self.q = np.array(model.home_q if q0 is None else q0, float)
        self.dq = np.zeros(self.n_joints)
        self.gripper = 1.0
        self.commands: list[tuple[int, np.ndarray, float]] = []
        self.fault: str | None = None
        self.recoveries = 0
        self.started = self.stopped = False

    def start(self, timeout_s: float) -> JointReading:
        self.started = True
        return self.read()

    def read(self) -> JointReading:
        if self.fault is not None:
            raise ArmDriverError(self.fault)
        return JointReading(now_ns(), self.q.copy(), self.dq.copy(), self.gripper * self.stroke)

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        q = np.asarray(q, float)
        self.commands.append((now_ns(), q.copy(), float(gripper_open)))
        self.q, self.gripper = q.copy(), float(gripper_open)

    def recover(self) -> bool:
        self.recoveries += 1
        self.fault = None
        return True

    def stop(self) -> None:
        self.stopped = True


class IdealArmConfig(DeviceConfig):
    """``{type: ideal, robot: ..., q0: [...]}``: the in-process test arm."""

    type: str = "ideal"
    robot: str = Field("panda_robotiq", description="robot model name (robot-stack robots)")
    q0: list[float] | None = Field(None, description="start posture, rad (None: the model's home)")
    requires: ClassVar[tuple[str, ...]] = ()

    def default_robot(self, config) -> str | None:
        return self.robot

    def build(self, ctx, params) -> IdealArmDriver:
        return IdealArmDriver(self.robot, self.q0)
