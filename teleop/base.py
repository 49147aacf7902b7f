"""Teleoperation device interface.

A device turns what a person (or a scripted expert) does into :class:`TeleopCommand` messages: an
end-effector delta (m, rad; base frame), an absolute end-effector target, or joint targets, plus a
gripper opening and button events. The teleop node polls one device at its rate and publishes
each command on ``teleop/command``; the controller turns commands into timed waypoints through the
same path and safety as a policy's actions.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import numpy as np

from robot_stack.comm.messages import TeleopCommand
from robot_stack.control.teleop_mix import apply_commands  # noqa: F401  (moved; kept importable here)
from robot_stack.runtime.devices import DeviceConfig


class TeleopError(RobotStackError, RuntimeError):
    """A teleop device cannot be opened or read (the message says which and why)."""


@dataclass(frozen=True)
class TeleopInputs:
    """What the stack gives a device each teleop period.

    Attributes:
        latest: topic -> the newest message on it (None before the first), for the topics the
            device's config asked for in :meth:`TeleopConfig.inputs`.
        t: now on the stack clock, s.
        period_s: the teleop period, s.
        latest_from: (node, topic) -> the newest message on ``topic`` from that node (several arm
            nodes publish ``robot/state``), or None.
    """

    latest: Callable[[str], Any]
    t: float
    period_s: float
    latest_from: Callable[[str, str], Any] = lambda node, topic: None


class TeleopDevice(ABC):
    """One input device. ``poll`` must not block longer than one teleop period."""

    @abstractmethod
    def poll(self, inputs: TeleopInputs) -> TeleopCommand | list[TeleopCommand] | None:
        """The command for this period (a list: one per arm, each naming its ``arm``), or None when
        the device has nothing new (idle)."""

    def on_episode(self, kind: str) -> None:
        """An episode event reached the teleop node ("start", "stop", "discard")."""

    def metrics(self) -> dict[str, float]:
        """Device counters for the node's heartbeat."""
        return {}

    def close(self) -> None:
        """Release the device."""


class TeleopConfig(DeviceConfig):
    """Base of a teleop device's config; ``build(ctx, params)`` returns a :class:`TeleopDevice`."""

    def inputs(self, params) -> dict[str, tuple[str, tuple[str, ...]]]:
        """The streams the device reads: node name -> (required node kind, topics), given the teleop
        node's typed params (its ``arm``). The node subscribes to them and checks the references
        at ``robot-stack check``."""
        return {}


class ArmSelector:
    """Which arm a person's one device drives when a controller drives several (bimanual).

    The device's ``switch_arm`` button passes it to the next arm in ``arms`` (cyclic); every
    command that names no arm is stamped with the arm it moves (``TeleopCommand.arm``). Commands
    that name their arm (a device that drives both, such as the scripted bimanual expert) pass
    as they are. With one arm or none (``arms`` empty) nothing is stamped: the controller's first
    arm is meant.

    Args:
        arms: the arm node names, in the controller's order.
    """

    def __init__(self, arms: list[str]):
        self.arms = list(arms)
        self.index = 0

    @property
    def current(self) -> str:
        """The arm the device drives now ("" when there is no choice)."""
        return self.arms[self.index] if self.arms else ""

    def route(self, cmd: TeleopCommand) -> TeleopCommand:
        """Apply a ``switch_arm`` in ``cmd`` first (the command then moves the new arm), then stamp
        ``cmd.arm`` if it names none; returns ``cmd``."""
        if "switch_arm" in cmd.buttons and len(self.arms) > 1:
            self.index = (self.index + 1) % len(self.arms)
        if not cmd.arm and len(self.arms) > 1:
            cmd.arm = self.current
        return cmd


def deadzone(x: np.ndarray, dz: float) -> np.ndarray:
    """Zero components with ``|x| < dz`` and rescale the rest so the output is continuous at the edge.

    Args:
        x: axis values in [-1, 1].
        dz: dead zone in [0, 1).
    Returns: same shape, in [-1, 1].
    """
    if not 0 <= dz < 1:
        raise ValueError(f"deadzone must be in [0, 1), got {dz}")
    x = np.clip(np.asarray(x, float), -1, 1)
    return np.where(np.abs(x) < dz, 0.0, np.sign(x) * (np.abs(x) - dz) / (1 - dz))


def axes_to_delta(axes6: np.ndarray, period_s: float, max_lin_vel: float, max_ang_vel: float) -> np.ndarray:
    """Scale six normalized axes [vx vy vz wx wy wz] in [-1, 1] to an ee delta for one period.

    Returns: (6,) [dx dy dz (m), rotation vector (rad)] in the base frame.
    """
    a = np.asarray(axes6, float)
    return np.concatenate([a[:3] * max_lin_vel * period_s, a[3:] * max_ang_vel * period_s])
