"""Scripted expert for the sim reach task, driving the same teleop path as a person.

It reads the cube's ground-truth pose from the sim world (``sim/objects``, privileged: only the
expert sees it, the policy sees cameras) and the measured TCP from the arm, and emits absolute
end-effector targets (``ee_absolute``) that move a carrot at constant speed: first to a point above
the cube, then straight down to the pre-grasp height. When the TCP has rested at the goal it
presses ``episode_stop`` once, as a person would at the end of a demonstration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
import numpy as np

from robot_stack.apps.task import ReachTask
from robot_stack.comm.messages import RobotState, TeleopCommand
from robot_stack.drivers.sim_messages import ObjectState

from .base import TeleopConfig, TeleopDevice, TeleopInputs


class ReachExpert(TeleopDevice):
    """Carrot-following reach demonstrations.

    As a teleop device it acts between an episode's start and its stop (the recorder's episode
    events reach the teleop node), reading the measured TCP (``robot/state``) and the cube's ground
    truth (``sim/objects``) each period.

    Args:
        task: the task (approach and grasp heights).
        speed: carrot speed, m/s.
        settle_s: time the TCP must stay within ``tol`` of the goal before ``episode_stop``, s.
        tol: goal tolerance, m.
        jitter: std (m) of a random offset of the approach point per episode (varied demos).
        seed: RNG seed.
    """

    def __init__(self, task: ReachTask = ReachTask(), speed: float = 0.15, settle_s: float = 0.4,
                 tol: float = 0.004, jitter: float = 0.01, seed: int = 0):
        self.task, self.speed, self.settle_s, self.tol, self.jitter = task, speed, settle_s, tol, jitter
        self.rng = np.random.default_rng(seed)
        self.active = False  # as a device: between episode start and stop
        self.reset()

    def reset(self) -> None:
        """Forget the episode (call when a new episode starts)."""
        self.carrot: np.ndarray | None = None
        self.orientation: np.ndarray | None = None
        self.offset = np.zeros(3)
        self.phase = 0
        self.settled_s = 0.0
        self.done = False

    def on_episode(self, kind: str) -> None:
        self.active = kind == "start"
        self.reset()

    def poll(self, inputs: TeleopInputs) -> TeleopCommand | None:
        """One period's command while an episode runs and both the TCP and the cube are known."""
        if not self.active:
            return None
        st, obj = inputs.latest(RobotState.TOPIC), inputs.latest(ObjectState.TOPIC)
        if st is None or obj is None:
            return None
        return self.step(np.asarray(st.ee_pose), np.asarray(obj.cube_pose[:3]), inputs.period_s)

    def metrics(self) -> dict[str, float]:
        return {"active": float(self.active)}

    def waypoints(self, cube_xyz: np.ndarray) -> list[np.ndarray]:
        c = np.asarray(cube_xyz, float)
        above = c + np.array([0, 0, self.task.approach_height]) + self.offset
        return [above, c + np.array([0, 0, self.task.grasp_height])]

    def step(self, tcp_pose: np.ndarray, cube_xyz: np.ndarray, period_s: float) -> TeleopCommand:
        """The command for one teleop period from the measured TCP pose (7,) and the cube centre (3,)."""
        tcp = np.asarray(tcp_pose, float)
        if self.carrot is None:
            self.carrot = tcp[:3].copy()
            self.orientation = tcp[3:] / np.linalg.norm(tcp[3:])
            self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
        goals = self.waypoints(cube_xyz)
        goal = goals[self.phase]
        d = goal - self.carrot
        dist = float(np.linalg.norm(d))
        step = self.speed * period_s
        if dist <= step:
            self.carrot = goal.copy()
            if self.phase + 1 < len(goals):
                self.phase += 1
        else:
            self.carrot = self.carrot + d / dist * step
        buttons = []
        at_goal = self.phase == len(goals) - 1 and np.linalg.norm(tcp[:3] - goals[-1]) < self.tol
        self.settled_s = self.settled_s + period_s if at_goal else 0.0
        if self.settled_s >= self.settle_s and not self.done:
            self.done = True
            buttons.append("episode_stop")
        return TeleopCommand(kind="ee_absolute", value=np.r_[self.carrot, self.orientation], gripper=1.0,
                             buttons=buttons)


class ScriptedConfig(TeleopConfig):
    """teleop device ``scripted``: the sim reach task's expert (reads the sim's ground truth)."""

    type: Literal["scripted"] = "scripted"
    speed: float = Field(0.15, gt=0, description="TCP speed, m/s")
    seed: int = 0
    world: str = Field("sim", description="node name of the sim world (its object ground truth)")

    def inputs(self, params) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {params.arm: ("arm", (RobotState.TOPIC,)), self.world: ("sim_world", (ObjectState.TOPIC,))}

    def build(self, ctx, params) -> "ReachExpert":
        return ReachExpert(speed=self.speed, seed=self.seed)
