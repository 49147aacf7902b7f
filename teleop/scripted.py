"""The scripted teleop device: a sim task's expert driving the same teleop path as a person.

The experts live with their tasks (``robot_stack/tasks/<task>.py``, found through the task
registry): each reads the object's ground-truth pose from the sim world (``sim/objects``,
privileged: only the expert sees it, the policy sees cameras) and the measured TCP from the arm,
emits absolute end-effector targets (``ee_absolute``) that move a carrot at constant speed, and
presses ``episode_stop`` once when its demonstration is done, as a person would.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
import numpy as np

from robot_stack.comm.messages import RobotState
from robot_stack.drivers.sim_messages import ObjectState
from robot_stack.tasks import Expert, LiftExpert, PickExpert, PressExpert, ReachExpert  # noqa: F401 (re-exported)
from robot_stack.tasks.registry import canonical, task_class

from .base import TeleopConfig


class ScriptedConfig(TeleopConfig):
    """teleop device ``scripted``: a sim task's expert (reads the sim's ground truth)."""

    type: Literal["scripted"] = "scripted"
    task: str = Field(
        "reach",
        description="the task it demonstrates (the sim world's task, a name in the task registry); "
        "a two-arm task (lift) drives the teleop node's two arms",
    )
    speed: float = Field(0.15, gt=0, description="TCP speed, m/s")
    seed: int = Field(0, description="seed of the expert's randomness (approach jitter, deliberate misses)")
    perturb_m: float = Field(
        0.0,
        ge=0,
        le=0.02,
        description="press: jumps of the command (m) in contact, so that "
        "demonstrations show the force reaction (DART-style)",
    )
    miss_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="pick: fraction of episodes whose first grasp is aimed "
        "beside the cube, so that demonstrations show the recovery from a missed grasp",
    )
    world: str = Field("sim", description="node name of the sim world (its object ground truth)")

    def inputs(self, params) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {
            **{a: ("arm", (RobotState.TOPIC,)) for a in params.arm_nodes},
            self.world: ("sim_world", (ObjectState.TOPIC,)),
        }

    @field_validator("task")
    @classmethod
    def _registered(cls, v: str) -> str:
        return canonical(v)

    def build(self, ctx, params) -> Expert:
        """The task's expert (``task.expert``); a several-arm task gets its arms' base poses."""
        task = task_class(self.task)()
        bases = self.arm_bases(ctx.config, params.arm_nodes) if task.arms > 1 else None
        return task.expert(self, bases)

    def arm_bases(self, cfg, arm_nodes: list[str]) -> dict[str, np.ndarray]:
        """Arm node -> (4, 4) pose of its base in the world frame, from the sim world's placement of
        the arm its sim driver names (privileged, like the object ground truth).

        Raises:
            ValueError: the world or an arm's sim driver is missing, or the world has no such arm.
        """
        if self.world not in cfg.nodes or cfg.nodes[self.world].kind != "sim_world":
            raise ValueError(f"teleop scripted (several arms): no sim world node {self.world!r}")
        world = cfg.nodes[self.world].typed
        out = {}
        for node in arm_nodes:
            name = getattr(cfg.nodes[node].typed.driver, "arm", None) if node in cfg.nodes else None
            if name not in world.arms:
                raise ValueError(
                    f"teleop scripted (several arms): arm node {node!r} drives no arm of the sim world "
                    f"(its arms: {sorted(world.arms)})"
                )
            out[node] = world.arms[name].T_world_base()
        return out
