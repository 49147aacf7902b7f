"""The pick-and-place task (``pick``) and its scripted expert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.spatial.transform import Rotation

from robot_stack.comm.messages import RobotState, TeleopCommand
from robot_stack.tasks.base import Expert, carrot_step
from robot_stack.tasks.reach import ReachTask


@dataclass(frozen=True)
class PickTask(ReachTask):
    """Pick-and-place: grasp the cube (random position and yaw) and place it in the target region.

    Success (sim ground truth, base frame): the cube's centre lies inside the target square
    (``target_xy`` +- ``target_half``, from the sim's object state), the cube rests on the table
    (centre below ``rest_z``) and it is released (measured gripper opening at least
    ``release_width``; the cube is 40 mm wide). The start pose is the reach task's.

    Expert heights (TCP above the table unless said otherwise), m: ``approach_height`` above the
    cube centre before descending, ``grasp_height`` above the cube centre when closing,
    ``carry_height`` while carrying, ``place_height`` of the TCP when opening.
    """

    grasp_height: float = 0.0
    carry_height: float = 0.15
    place_height: float = 0.035
    release_width: float = 0.06
    rest_z: float = 0.05

    error_name = "cube-target"
    grasps = True

    def near_goal(self, error: float) -> bool:
        """Within 100 mm of the target's centre (twice the sim target square's half size)."""
        return error <= 100.0

    name = "pick"
    text = "pick the cube (random pose, seen through the wrist camera) and place it in the target square"
    setup: ClassVar[str | None] = "sim_panda_pick.yaml"
    demo_quick: ClassVar[dict] = {
        "demos": 2,
        "train_steps": 100,
        "eval_episodes": 1,
        "max_episode_s": 12.0,
        "collect_episode_s": 25.0,
    }
    demo_full: ClassVar[dict] = {
        "demos": 50,
        "train_steps": 3000,
        "eval_episodes": 20,
        "max_episode_s": 25.0,
        "collect_episode_s": 25.0,
    }

    def expert(self, device, bases: dict | None = None) -> Expert:
        return PickExpert(self, speed=device.speed, seed=device.seed, miss_rate=device.miss_rate)

    def placed(self, cube_xyz: np.ndarray, target_xy: np.ndarray, target_half: float, gripper_width: float) -> bool:
        """True when the cube (3,) is inside the target square, on the table, and the gripper is open."""
        c, t = np.asarray(cube_xyz, float), np.asarray(target_xy, float)
        return bool(
            abs(c[0] - t[0]) <= target_half
            and abs(c[1] - t[1]) <= target_half
            and c[2] < self.rest_z
            and gripper_width >= self.release_width
        )

    def achieved(self, state, obj, cube_start_xyz: np.ndarray) -> bool:
        return self.placed(obj.cube_pose[:3], obj.target_xy, float(obj.target_half), float(state.gripper_width))

    def error_mm(self, state, obj) -> float:
        """Horizontal cube-to-target-centre distance, mm."""
        d = np.asarray(obj.cube_pose[:2], float) - np.asarray(obj.target_xy, float)
        return float(np.hypot(*d)) * 1e3


class PickExpert(Expert):
    """Pick-and-place demonstrations: a carrot through a list of phases, each a goal with a gripper
    command, as :class:`ReachExpert` does for reach.

    Phases: above the cube (``approach_height``, with a random per-episode offset), down to the
    grasp height, close the gripper (wait ``close_s``), lift to ``carry_height``, over the target
    centre, down to ``place_height``, open (wait ``open_s``), up to ``carry_height`` again, then
    ``episode_stop`` once the TCP rested there ``settle_s``. The TCP orientation stays the episode's
    start orientation: the Robotiq 2F-85 closes square on the cube at any yaw of the randomized
    +-45 deg (its pads turn the cube). Until the grasp the cube goals follow the cube's ground truth
    (``sim/objects``); after it they stay put. A descent waits for the TCP (within ``tol``, at most
    ``wait_s``) before the gripper moves.

    Recovery: when the lift ends with the cube still on the table (its centre below
    ``lifted_z``), the grasp missed; the expert opens and starts again from the approach, following
    the cube where it now lies (at most ``max_attempts`` attempts). So that demonstrations show this
    recovery, a fraction ``miss_rate`` of episodes aim their first grasp ``miss_offset`` beside the
    cube along the TCP x axis, the axis along the pads: the fingers close on air beside the cube
    without pushing it (measured in MuJoCo: 45 mm beside it the cube does not move; along the
    closing axis it is pushed 13-20 mm). A policy trained on them sees what a missed grasp looks
    like (the measured gripper width closes to zero, the wrist camera shows the cube below) and what
    follows it; this is a deliberate, recorded recovery, not noise added to the commands.

    Args:
        task: heights and the release width.
        speed: carrot speed, m/s. close_s, open_s: gripper waits, s.
        settle_s, tol: as for ReachExpert. wait_s: longest wait for the TCP at a descent goal, s.
        jitter: std (m) of the approach offset. seed: RNG seed.
        miss_rate: fraction of episodes whose first grasp is aimed beside the cube, 0..1.
        miss_offset: how far beside the cube that grasp is aimed, m.
        lifted_z: cube centre height (m, base frame) above which a lift counts as a grasp.
        max_attempts: grasp attempts; after the last it finishes the motions and presses stop, and the
            task's check reports the failure.
    """

    def __init__(
        self,
        task: PickTask = PickTask(),
        speed: float = 0.15,
        close_s: float = 0.7,
        open_s: float = 0.5,
        settle_s: float = 0.3,
        tol: float = 0.006,
        wait_s: float = 1.5,
        jitter: float = 0.01,
        seed: int = 0,
        miss_rate: float = 0.0,
        miss_offset: float = 0.045,
        lifted_z: float = 0.05,
        max_attempts: int = 3,
    ):
        if not 0.0 <= miss_rate <= 1.0:
            raise ValueError(f"miss_rate must be in [0, 1], got {miss_rate}")
        self.task, self.speed, self.close_s, self.open_s = task, speed, close_s, open_s
        self.settle_s, self.tol, self.wait_s, self.jitter = settle_s, tol, wait_s, jitter
        self.miss_rate, self.miss_offset, self.lifted_z, self.max_attempts = (
            miss_rate,
            miss_offset,
            lifted_z,
            max_attempts,
        )
        self.rng = np.random.default_rng(seed)
        self.active = False
        self.reset()

    PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "open", "retreat")

    def reset(self) -> None:
        self.carrot: np.ndarray | None = None
        self.orientation: np.ndarray | None = None
        self.offset = np.zeros(3)
        self.phase = 0
        self.t_phase = 0.0  # time the carrot has been at this phase's goal, s
        self.settled_s = 0.0
        self.grasp_xyz: np.ndarray | None = None
        self.done = False
        self.attempt = 0
        self.miss = np.zeros(3)  # this attempt's deliberate grasp offset, m (base frame)

    def command(self, state: RobotState, obj, period_s: float) -> TeleopCommand:
        return self.step(np.asarray(state.ee_pose), np.asarray(obj.cube_pose[:3]), np.asarray(obj.target_xy), period_s)

    def metrics(self) -> dict[str, float]:
        return {"active": float(self.active), "phase": float(self.phase), "attempt": float(self.attempt)}

    def goal(self, cube_xyz: np.ndarray, target_xy: np.ndarray) -> tuple[np.ndarray, float]:
        """This phase's TCP goal (3,) in the base frame and gripper command (1 open, 0 closed)."""
        t = self.task
        c = self.grasp_xyz if self.grasp_xyz is not None else np.asarray(cube_xyz, float) + self.miss
        tgt = np.r_[np.asarray(target_xy, float), 0.0]
        name = self.PHASES[self.phase]
        return {
            "approach": (c + np.r_[0, 0, t.approach_height] + self.offset, 1.0),
            "descend": (c + np.r_[0, 0, t.grasp_height], 1.0),
            "close": (c + np.r_[0, 0, t.grasp_height], 0.0),
            "lift": (np.r_[c[:2], t.carry_height], 0.0),
            "carry": (tgt + np.r_[0, 0, t.carry_height], 0.0),
            "lower": (tgt + np.r_[0, 0, t.place_height], 0.0),
            "open": (tgt + np.r_[0, 0, t.place_height], 1.0),
            "retreat": (tgt + np.r_[0, 0, t.carry_height], 1.0),
        }[name]

    def step(self, tcp_pose: np.ndarray, cube_xyz: np.ndarray, target_xy: np.ndarray, period_s: float) -> TeleopCommand:
        """The command for one teleop period from the measured TCP pose (7,), the cube centre (3,)
        and the target centre (2,), base frame."""
        tcp = np.asarray(tcp_pose, float)
        if self.carrot is None:
            self.carrot = tcp[:3].copy()
            self.orientation = tcp[3:] / np.linalg.norm(tcp[3:])
            self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
            if self.rng.random() < self.miss_rate:
                x = Rotation.from_quat(self.orientation).as_matrix()[:, 0]
                x = np.r_[x[:2], 0.0] / max(np.linalg.norm(x[:2]), 1e-9)
                self.miss = self.miss_offset * self.rng.choice([-1.0, 1.0]) * x
        goal, grip = self.goal(cube_xyz, target_xy)
        d = goal - self.carrot
        dist = float(np.linalg.norm(d))
        step = carrot_step(self.carrot, tcp[:3], self.speed * period_s)
        name = self.PHASES[self.phase]
        if dist <= step:
            self.carrot = goal.copy()
            self.t_phase += period_s
            arrived = np.linalg.norm(tcp[:3] - goal) < self.tol
            if name in ("close", "open"):
                advance = self.t_phase >= (self.close_s if name == "close" else self.open_s)
            elif name in ("descend", "lower"):
                advance = arrived or self.t_phase >= self.wait_s
            else:
                advance = True
            if name == "descend" and advance:
                self.grasp_xyz = goal - np.r_[0, 0, self.task.grasp_height]
            if name == "lift" and cube_xyz[2] < self.lifted_z and self.attempt + 1 < self.max_attempts:
                # missed: open on the way back up to the approach over where the cube now lies
                self.attempt += 1
                self.phase, self.t_phase, self.grasp_xyz, self.miss = 0, 0.0, None, np.zeros(3)
                self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
                advance = False
            if advance and self.phase + 1 < len(self.PHASES):
                self.phase += 1
                self.t_phase = 0.0
        else:
            self.carrot = self.carrot + d / dist * step
        buttons = []
        at_end = self.phase == len(self.PHASES) - 1 and np.linalg.norm(tcp[:3] - goal) < self.tol
        self.settled_s = self.settled_s + period_s if at_end else 0.0
        if self.settled_s >= self.settle_s and not self.done:
            self.done = True
            buttons.append("episode_stop")
        return TeleopCommand(
            kind="ee_absolute", value=np.r_[self.carrot, self.orientation], gripper=grip, buttons=buttons
        )
