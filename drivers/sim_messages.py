"""Messages between the sim world and its drivers: the simulated controller box's protocol.

Only the sim speaks these: the sim arm driver sends :class:`JointTarget` and reads
:class:`JointState`, sim cameras render from :class:`SimState`, sessions reset the world with
:class:`SimCommand`, and the recorder stores :class:`ObjectState` (ground truth for success checks).
Hardware drivers talk to their SDKs instead. The schemas register with the codec on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from robot_stack.comm.messages import FLOAT64, Message, array, scalar


def arm_topic(topic: str, arm: str) -> str:
    """The topic of one arm's joint messages: ``topic`` for the arm of a one-arm world (named ""),
    ``topic/<arm>`` in a multi-arm world (each arm's driver subscribes to its own)."""
    return f"{topic}/{arm}" if arm else topic


@dataclass(kw_only=True)
class JointState(Message):
    """Joint-level state from the sim world (the simulated arm's own controller box).

    Attributes:
        stamp_ns: measurement time on the stack clock, ns.
        q: (n,) float64 joint positions, rad.
        dq: (n,) float64 joint velocities, rad/s.
        tau: (n,) float64 commanded joint torques, N m.
        gripper_width: finger opening, m.
        wrench: (6,) float64 external wrench on the tool at the TCP, base frame: N, N m
            (:meth:`SimWorld.tcp_wrench`); None from a world without the sensor.
        arm: the arm ("" in a one-arm world; published on :func:`arm_topic`).
    """

    SCHEMA: ClassVar[str] = "joint_state"
    TOPIC: ClassVar[str] = "sim/joint_state"
    q: np.ndarray = array(FLOAT64, (None,))
    dq: np.ndarray = array(FLOAT64, (None,))
    tau: np.ndarray = array(FLOAT64, (None,))
    gripper_width: float = scalar("float", 0.0)
    wrench: np.ndarray | None = array(FLOAT64, (6,), optional=True)
    arm: str = scalar("str", "")


@dataclass(kw_only=True)
class JointTarget(Message):
    """Servo-rate joint target for the sim world (the simulated arm's own controller box).

    Attributes:
        q: (n,) float64 joint position targets, rad.
        gripper: gripper opening target in [0, 1] (0 closed, 1 open).
        arm: the arm it is for ("" in a one-arm world).
    """

    SCHEMA: ClassVar[str] = "joint_target"
    TOPIC: ClassVar[str] = "sim/joint_target"
    q: np.ndarray = array(FLOAT64, (None,))
    gripper: float = scalar("float", 1.0)
    arm: str = scalar("str", "")


@dataclass(kw_only=True)
class SimCommand(Message):
    """Simulation world control: "reset" puts the arm home and the cube at ``cube_pose``
    ([x y z qx qy qz qw] in the base frame) or a random pose when it is None."""

    SCHEMA: ClassVar[str] = "sim_command"
    TOPIC: ClassVar[str] = "sim/command"
    kind: str = scalar("str", "reset", choices=("reset",))
    cube_pose: np.ndarray | None = array(FLOAT64, (7,), optional=True)
    seed: int = scalar("int", -1)


@dataclass(kw_only=True)
class SimState(Message):
    """Full MuJoCo ``qpos`` of the sim world at physics step ``step`` (for sim camera renderers).

    Attributes:
        stamp_ns: host time the state belongs to (sim time follows the host clock), ns.
        qpos: (nq,) float64 generalized positions.
        step: physics step index since the last reset.
    """

    SCHEMA: ClassVar[str] = "sim_state"
    TOPIC: ClassVar[str] = "sim/state"
    qpos: np.ndarray = array(FLOAT64, (None,))
    step: int = scalar("int", 0)


@dataclass(kw_only=True)
class ObjectState(Message):
    """Ground-truth object poses from the simulation (for success checks and tests only).

    Attributes:
        cube_pose: (7,) [x y z qx qy qz qw] in the base frame, m.
        target_xy: (2,) centre of the target region, m.
        target_half: half size of the target region, m.
    """

    SCHEMA: ClassVar[str] = "object_state"
    TOPIC: ClassVar[str] = "sim/objects"
    cube_pose: np.ndarray = array(FLOAT64, (7,))
    target_xy: np.ndarray = array(FLOAT64, (2,))
    target_half: float = scalar("float", 0.05)
