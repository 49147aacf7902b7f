"""Arm driver interface.

An arm driver is the link to the robot's own controller: it reads joint state and takes joint
position targets at servo rate (the arm node does interpolation, IK and safety above it).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class ArmDriverError(RobotStackError, RuntimeError):
    """The arm is unreachable or reported a fault."""


@dataclass
class JointReading:
    """One state measurement.

    Attributes:
        stamp_ns: measurement time on the stack clock, ns.
        q: (n,) joint positions, rad; dq: (n,) joint velocities, rad/s.
        gripper_width: finger opening, m.
        wrench: (6,) external wrench on the tool at the TCP, base frame, [fx fy fz] N and
            [tx ty tz] N m (a wrist F/T sensor, or the arm's own estimate); None without one.
    """

    stamp_ns: int
    q: np.ndarray
    dq: np.ndarray
    gripper_width: float
    wrench: np.ndarray | None = None


def usable_wrench(wrench) -> np.ndarray | None:
    """A driver's wrench as the stack publishes it: (6,) float64 when it has 6 finite values, else
    None (no wrench: a sensor glitch never reaches a fast layer as NaN or as a wrong shape)."""
    if wrench is None:
        return None
    w = np.asarray(wrench, np.float64).ravel()
    return w if w.shape == (6,) and np.all(np.isfinite(w)) else None


class ArmDriver(ABC):
    """A robot arm with an optional gripper.

    Attributes:
        n_joints: number of arm joints.
        lower, upper: (n,) joint limits, rad.
    """

    n_joints: int
    lower: np.ndarray
    upper: np.ndarray

    @abstractmethod
    def start(self, timeout_s: float) -> JointReading:
        """Connect; return the first measured state. Raises ArmDriverError on failure."""

    @abstractmethod
    def read(self) -> JointReading:
        """Newest measured state (non-blocking)."""

    @abstractmethod
    def command(self, q: np.ndarray, gripper_open: float) -> None:
        """Send joint position targets (rad) and a gripper opening in [0, 1]."""

    def set_step_period(self, dt_s: float) -> None:
        """The period (s) the next :meth:`command`'s step was limited for (the arm node's guard
        limits each step by the time that really passed, overruns included). Drivers whose
        protocol carries the step's time (UR ``servoJ``'s ``t``) use it; others ignore it."""

    def stop(self) -> None:
        """Disconnect (the robot's controller holds its last target)."""

    # --- optional capabilities: every driver has them; these defaults mean "not supported" ----
    #: True when :meth:`recover` can clear a robot fault (UR: unlock a protective stop, restart
    #: the program); False for drivers that recover by themselves or not at all
    can_recover: bool = False
    #: commands the driver could not hand to the robot in time (a full queue, a slow link)
    send_timeouts: int = 0

    def recover(self) -> bool:
        """Start clearing a robot fault; True when a recovery started (default: not supported)."""
        return False

    def fault(self) -> str | None:
        """Why the robot will not follow commands now, or None (default: no fault known)."""
        return None

    def loop_stats(self) -> dict[str, float]:
        """The driver's own figures for the heartbeat (its control loop's period, ...); default none."""
        return {}
