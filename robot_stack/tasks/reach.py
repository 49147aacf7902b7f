"""The reach task (``reach``) and its scripted expert; the base of the other cube tasks.

The cube is placed at a random position and yaw on the table each episode (``SimWorld.reset``); the
policy knows it only through the cameras. The arm must bring the gripper down around the cube (a
pre-grasp pose: TCP, the pinch point between the fingertips, over the cube's centre, fingers
straddling it) without knocking it away.

Each episode starts at a randomized pose above the workspace (``start_pose``, with the home
posture's TCP orientation in collect and deploy) from which the
wrist camera sees the whole cube range. Success (all in the base frame): the TCP is within ``xy_tol`` (m) of the cube centre horizontally
and between 0 and ``z_tol`` above the cube centre, and the cube moved less than ``push_tol`` from
where it was placed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from robot_stack.comm.messages import RobotState, TeleopCommand
from robot_stack.tasks.base import Expert, carrot_step


@dataclass(frozen=True)
class ReachTask:
    """Success check of the reach task (tolerances in m)."""

    xy_tol: float = 0.02
    z_tol: float = 0.03
    push_tol: float = 0.02
    start_xyz: tuple[float, float, float] = (0.42, -0.02, 0.48)  # episode start: the wrist camera sees the
    start_jitter: float = 0.03  # whole cube range from here; uniform +-jitter in x and y, m
    approach_height: float = 0.12  # expert: above the cube before descending, m
    grasp_height: float = 0.005  # expert: final TCP height above the cube centre, m

    yaw: float = 0.0  # the robot's workspace_yaw (rad): start_xyz is laid out in front of the robot

    #: where the sim places the cube each episode: ((x lo, x hi), (y lo, y hi)) m (None: the sim
    #: world's default range) and yaw within +-max_yaw, rad
    cube_range = None
    max_yaw: float = float(np.pi / 4)

    def start_pose(self, rng: np.random.Generator, orientation: np.ndarray) -> np.ndarray:
        """A randomized episode start pose (7,) [x y z qx qy qz qw] with the given TCP orientation;
        ``start_xyz`` is turned by ``yaw`` about the base z axis (a UR5e's front is +y)."""
        xyz = np.asarray(self.start_xyz, float) + np.r_[rng.uniform(-self.start_jitter, self.start_jitter, 2), 0.0]
        c, s_ = np.cos(self.yaw), np.sin(self.yaw)
        xyz[:2] = [c * xyz[0] - s_ * xyz[1], s_ * xyz[0] + c * xyz[1]]
        return np.r_[xyz, orientation]

    error_name = "TCP-cube"  # what error_mm measures
    error_unit = "mm"  # error_mm's unit
    hold_s: float = 0.3  # deploy: success must hold this long (s), not just be passed through
    grasps = False  # deploy's failure naming: the task grasps an object (dropped object, missed grasp)

    def near_goal(self, error: float) -> bool:
        """A failed episode ending with this ``error_mm`` was near the goal (deploy's failure
        naming, :mod:`robot_stack.apps.failures`): within twice the horizontal tolerance."""
        return error <= 2e3 * self.xy_tol

    # ---- the task as data: what the registry, the sim world, the scripted device and the demo read
    name = "reach"
    #: what a person reads (the demo's banner; the recorder's task text comes from the setup)
    text = "reach the cube (random pose each episode, seen only through the wrist camera)"
    #: the setup in configs/ that ``robot-stack demo --task NAME`` runs (None: no demo); the demo
    #: sets the task's name on its sim world and scripted device, so a new task can reuse a setup
    setup: ClassVar[str | None] = "sim_panda_reach.yaml"
    #: arms the task needs (a two-arm task runs in a two-arm sim world)
    arms: ClassVar[int] = 1
    #: ``robot-stack demo`` sizes: ``DemoSettings`` fields for --quick (CI) and the full run
    demo_quick: ClassVar[dict] = {"demos": 5, "train_steps": 300, "eval_episodes": 2, "max_episode_s": 8.0}
    demo_full: ClassVar[dict] = {}
    #: training settings (``TrainSettings`` fields) when ``configs/train/<name>.yaml`` does not exist
    train: ClassVar[dict] = {}

    def scene(self) -> dict:
        """What the task changes in the sim scene: ``SceneSpec`` fields (such as ``cube_half``,
        m, and ``cube_mass``, kg); {} keeps the 4 cm cube on the table."""
        return {}

    def on_reset(self, world) -> str | None:
        """Randomise what ``SimWorld.reset`` does not (the sim's ``SimWorld``, after the object is
        placed); returns a line for the sim world's log, or None."""
        return None

    def expert(self, device, bases: dict | None = None) -> Expert:
        """The scripted expert that demonstrates the task through the teleop path.

        Args:
            device: the scripted teleop device's config (``speed`` m/s, ``seed``, ``perturb_m``,
                ``miss_rate``).
            bases: for a several-arm task, arm node -> (4, 4) pose of its base in the world frame.
        """
        return ReachExpert(self, speed=device.speed, seed=device.seed)

    def achieved(self, state, obj, cube_start_xyz: np.ndarray) -> bool:
        """Success from a robot state (``ee_pose``, ``gripper_width``) and the sim's object state
        (``cube_pose``, ``target_xy``, ``target_half``): :meth:`success` of the TCP and cube."""
        return self.success(np.asarray(state.ee_pose[:3]), np.asarray(obj.cube_pose[:3]), cube_start_xyz)

    def error_mm(self, state, obj) -> float:
        """Horizontal TCP-to-cube distance, mm."""
        return self.xy_error(state.ee_pose[:3], obj.cube_pose[:3]) * 1e3

    def success(self, tcp_xyz: np.ndarray, cube_xyz: np.ndarray, cube_start_xyz: np.ndarray) -> bool:
        """True when the TCP (3,) is in the pre-grasp region of the cube (3,) and the cube stayed put."""
        d = np.asarray(tcp_xyz, float) - np.asarray(cube_xyz, float)
        moved = np.linalg.norm(np.asarray(cube_xyz, float)[:2] - np.asarray(cube_start_xyz, float)[:2])
        return bool(np.hypot(d[0], d[1]) <= self.xy_tol and -0.005 <= d[2] <= self.z_tol and moved <= self.push_tol)

    def xy_error(self, tcp_xyz: np.ndarray, cube_xyz: np.ndarray) -> float:
        """Horizontal TCP-to-cube distance, m."""
        d = np.asarray(tcp_xyz, float)[:2] - np.asarray(cube_xyz, float)[:2]
        return float(np.hypot(*d))


class ReachExpert(Expert):
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

    def __init__(
        self,
        task: ReachTask = ReachTask(),
        speed: float = 0.15,
        settle_s: float = 0.4,
        tol: float = 0.004,
        jitter: float = 0.01,
        seed: int = 0,
    ):
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

    def command(self, state: RobotState, obj, period_s: float) -> TeleopCommand:
        return self.step(np.asarray(state.ee_pose), np.asarray(obj.cube_pose[:3]), period_s)

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
        step = carrot_step(self.carrot, tcp[:3], self.speed * period_s)
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
        return TeleopCommand(
            kind="ee_absolute", value=np.r_[self.carrot, self.orientation], gripper=1.0, buttons=buttons
        )
