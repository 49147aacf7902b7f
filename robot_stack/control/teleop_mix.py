"""Teleop commands to waypoints, for one arm or several, and replayed streams fed piecewise (pure).

:class:`TeleopMixer` keeps a target per arm and turns each control step's new teleop commands into
what goes to the arms one control period ahead: absolute targets as given, deltas added to the
current target (from where the arm is, for an arm no command moved yet), joint commands (leader
arms) as joint-space waypoints. With several arms every arm gets its target on the same stamp
(lockstep), so the recorded actions cover every arm.

:class:`ReplayQueue` holds a replayed action stream (``robot-stack replay``) and releases the part
due within a lead, since the arm takes schedules only so far ahead and so long; with several arms it
waits for every arm's part (the same stamps) before it starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from robot_stack.comm.messages import RobotState, TeleopCommand

log = logging.getLogger(__name__)


@dataclass
class TeleopStep:
    """What one control step of teleop sends.

    Attributes:
        lockstep: (stamps (1,), actions (1, 8 * arms)) for every arm through the committed plan, or None.
        each: (arm, stamps, positions, space, gripper) sent to one arm on its own (joint commands,
            and end-effector arms beside them).
        unknown_arms: arms named by commands that this controller does not drive.
    """

    lockstep: tuple[np.ndarray, np.ndarray] | None = None
    each: list = field(default_factory=list)
    unknown_arms: set[str] = field(default_factory=set)


class TeleopMixer:
    """Teleop commands to waypoints (see the module docstring).

    Args:
        arms: arm node names in action order.
        lead_ns: how far ahead of now a teleop waypoint is stamped (a control period plus the
            execution latency), ns.
        timeout_ns: commands older than this are not executed, ns.
    """

    def __init__(self, arms: list[str], lead_ns: int, timeout_ns: int):
        self.arms, self.lead_ns, self.timeout_ns = list(arms), lead_ns, timeout_ns
        self.targets: dict[str, np.ndarray] = {}  # arm -> (8,) pose + gripper, its base frame

    def clear(self) -> None:
        self.targets = {}

    def step(self, cmds: list[TeleopCommand], states: dict[str, RobotState | None], now_ns: int) -> TeleopStep:
        """The waypoints for ``cmds`` (this step's new commands, oldest first) given every arm's
        newest state. Nothing when the commands are stale or an arm's state is missing."""
        out = TeleopStep()
        fresh = [c for c in cmds if now_ns - c.stamp_ns < self.timeout_ns]
        if not fresh:
            return out
        per_arm = {a: [c for c in fresh if (c.arm or self.arms[0]) == a] for a in self.arms}
        out.unknown_arms = {c.arm for c in fresh if c.arm and c.arm not in per_arm}
        if out.unknown_arms:
            log.warning(
                "teleop commands for arms this controller does not drive were ignored: %s", sorted(out.unknown_arms)
            )
        if any(st is None for st in states.values()):
            return out
        t = np.array([now_ns + self.lead_ns], np.int64)
        joint_arms = []
        for arm, mine in per_arm.items():
            if mine and mine[-1].kind == "joint":  # leader arm: joint-space waypoint, same arm-node safety
                c = mine[-1]
                joint_arms.append(arm)
                self.targets.pop(arm, None)
                out.each.append(
                    (arm, t, np.asarray(c.value, float)[None], "joint", np.array([np.clip(c.gripper, 0, 1)]))
                )
                continue
            target = self.targets.get(arm)
            if target is None:  # from where the arm is (an arm no command moved yet holds there)
                target = np.r_[np.asarray(states[arm].ee_pose, float), 1.0]
            self.targets[arm] = apply_commands(target, mine)
        if not joint_arms:  # every arm its target, the same stamp (lockstep), through the committed plan
            out.lockstep = (t, np.concatenate([self.targets[a] for a in self.arms])[None])
            return out
        for arm in self.arms:  # mixed: the end-effector arms that were moved, each on its own
            if arm not in joint_arms and per_arm[arm]:
                tg = self.targets[arm]
                out.each.append((arm, t, tg[None, :7], "ee", tg[7:8]))
        return out


class ReplayQueue:
    """A replayed action stream, released piecewise (see the module docstring).

    Args:
        arms: arm node names in action order.
        lead_ns: waypoints go to the arm this far ahead of their times, ns.
    """

    def __init__(self, arms: list[str], lead_ns: int = 1_000_000_000):
        self.arms, self.lead_ns = list(arms), lead_ns
        self.clear()

    def clear(self) -> None:
        self.stamps = np.zeros(0, np.int64)
        self.actions = np.zeros((0, 8 * len(self.arms)))
        self.pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, arm: str, stamps_ns: np.ndarray, poses: np.ndarray, gripper: np.ndarray | None) -> bool:
        """One arm's replay schedule (``arm`` "" for the first); True once every arm's part came
        and the stream replaced any earlier one.

        Raises:
            ValueError: not (N, 7) TCP poses, an arm this controller does not drive, or arms'
                parts with different stamps.
        """
        poses = np.asarray(poses)
        if poses.ndim != 2 or poses.shape[1] != 7:
            raise ValueError(f"replay schedules are TCP poses (N, 7), got {poses.shape}")
        arm = arm or self.arms[0]
        if arm not in self.arms:
            raise ValueError(f"replay schedule for arm {arm!r}: this controller drives {self.arms}")
        g = np.ones(len(stamps_ns)) if gripper is None else np.asarray(gripper)
        self.pending[arm] = (np.asarray(stamps_ns, np.int64), np.c_[poses, g])
        if len(self.pending) < len(self.arms):
            return False  # several arms: every arm's part first (lockstep: one schedule per arm, the same stamps)
        parts = [self.pending.pop(a) for a in self.arms]
        if any(not np.array_equal(p[0], parts[0][0]) for p in parts[1:]):
            raise ValueError("replay schedules of the arms differ in their stamps; lockstep needs the same")
        self.stamps, self.actions = parts[0][0], np.concatenate([p[1] for p in parts], axis=1)
        return True

    def due(self, now_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The next part (stamps, actions) whose waypoints lie within the lead, or None."""
        n = int(np.searchsorted(self.stamps, now_ns + self.lead_ns, side="right"))
        if n == 0:
            return None
        out = self.stamps[:n], self.actions[:n]
        self.stamps, self.actions = self.stamps[n:], self.actions[n:]
        return out


def apply_commands(target: np.ndarray, cmds: list[TeleopCommand]) -> np.ndarray:
    """Fold teleop commands into the TCP target (8,) [x y z qx qy qz qw gripper], base frame.

    ``ee_absolute`` replaces the pose; ``ee_delta`` adds the translation (m) and pre-multiplies the
    rotation vector (rad, base frame). The gripper follows the newest command. Joint commands are
    not end-effector targets and are skipped here.
    """
    from scipy.spatial.transform import Rotation

    out = np.asarray(target, float).copy()
    for c in cmds:
        v = np.asarray(c.value, float)
        if c.kind == "ee_absolute":
            out[:7] = v
        elif c.kind == "ee_delta":
            out[:3] += v[:3]
            if np.any(v[3:]):
                out[3:7] = (Rotation.from_rotvec(v[3:]) * Rotation.from_quat(out[3:7])).as_quat()
        else:
            continue
        out[7] = float(np.clip(c.gripper, 0, 1))
    return out
