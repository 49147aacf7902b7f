"""The sim tasks of the main job: reach the cube (:class:`ReachTask`), pick-and-place it
(:class:`PickTask`), press it with a set force (:class:`PressTask`, the contact task) and, with two
arms, lift a bar together (:class:`LiftTask`, the bimanual task). A config names its task in the sim world's ``task`` parameter
(:func:`task_for_config`).

Reach:

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

import numpy as np


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

    name = "reach"
    error_name = "TCP-cube"  # what error_mm measures
    error_unit = "mm"  # error_mm's unit
    hold_s: float = 0.3  # deploy: success must hold this long (s), not just be passed through

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

    name = "pick"
    error_name = "cube-target"

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


@dataclass(frozen=True)
class PressTask(ReachTask):
    """Press the cube down with a set force: a contact task for slow-fast control (RDP,
    arXiv 2503.02881, measures reactive policies on such tasks).

    The cube lies at a random position (in ``cube_range``, 6 cm square) and yaw, and its contact softness is random
    each episode (``SimWorld.randomize_cube_softness``): the depth a given force needs differs by
    episode and cannot be seen, only felt with the wrist force/torque (``RobotState.wrench``).
    Success (base frame): the TCP is within ``xy_tol`` of the cube centre horizontally, the
    measured push on the tool along +z is within ``force_tol`` (fraction) of ``force_n``, the cube
    moved less than ``push_tol``, and all of it holds ``hold_s``. ``error_mm`` is the force error
    in N (``error_unit``).

    Expert: closes the gripper (the fingertips are the probe), goes ``approach_height`` over the
    cube, down to ``touch_height`` above its centre (just short of the top), then searches down
    at ``search_speed`` until it feels ``contact_n`` and regulates the force (admittance).
    """

    #: the cube's x and y ranges in the sim, m (narrower than reach's: the task is the force, not
    #: finding the cube)
    cube_range = ((0.47, 0.53), (-0.05, 0.01))
    force_n: float = 8.0
    force_tol: float = 0.25
    hold_s: float = 1.0
    push_tol: float = 0.03
    approach_height: float = 0.10
    touch_height: float = 0.045  # TCP over the cube centre where the search starts (touch at ~37 mm), m
    contact_n: float = 0.5
    search_speed: float = 0.01  # m/s

    name = "press"
    error_name = "|Fz - F*|"
    error_unit = "N"

    @staticmethod
    def force_z(state) -> float:
        """Measured push on the tool along base +z, N (NaN without a wrench)."""
        w = getattr(state, "wrench", None)
        return float(w[2]) if w is not None else float("nan")

    def achieved(self, state, obj, cube_start_xyz: np.ndarray) -> bool:
        tcp, cube = np.asarray(state.ee_pose[:3], float), np.asarray(obj.cube_pose[:3], float)
        moved = np.linalg.norm(cube[:2] - np.asarray(cube_start_xyz, float)[:2])
        f = self.force_z(state)
        return bool(
            self.xy_error(tcp, cube) <= self.xy_tol
            and abs(f - self.force_n) <= self.force_tol * self.force_n
            and moved <= self.push_tol
        )

    def error_mm(self, state, obj) -> float:
        """Force error |Fz - force_n|, N (the unit is ``error_unit``)."""
        return abs(self.force_z(state) - self.force_n)


@dataclass(frozen=True)
class LiftTask(ReachTask):
    """Bimanual: two arms grasp a bar at its two ends and lift it together, level.

    The bar (``bar_half`` half sizes, along the world y axis between the arms, ``bar_mass``) lies
    at a random position in ``cube_range`` and yaw within +-``max_yaw`` (rad) each episode.
    Success (sim ground truth, world frame): the bar's centre is at least ``lift_height`` above
    where it lay and its long axis is within ``max_tilt`` (rad) of horizontal, held ``hold_s``:
    one arm lifting alone tilts it, so both must lift. ``error_mm`` is how far the bar's centre
    is above where it lay, mm.

    Expert (``teleop/scripted.py: LiftExpert``): each arm's grasp point is ``grasp_offset`` from
    the bar's centre along its axis; fingers close across the bar (the TCP turned 90 deg about z
    from the arm's home orientation, plus the bar's yaw); ``approach_height`` over the grasp
    points, down to them, close, lift to ``carry_height`` above them, hold.
    """

    cube_range = ((0.45, 0.55), (-0.03, 0.03))
    max_yaw: float = 0.17  # rad, about 10 deg
    bar_half: tuple[float, float, float] = (0.02, 0.18, 0.02)
    bar_mass: float = 0.15
    grasp_offset: float = 0.13
    approach_height: float = 0.10
    grasp_height: float = 0.0
    carry_height: float = 0.12
    lift_height: float = 0.06
    max_tilt: float = 0.17  # rad, about 10 deg
    hold_s: float = 0.5

    name = "lift"
    error_name = "bar lift"

    def start_pose(self, rng: np.random.Generator, orientation: np.ndarray) -> None:
        """Episodes start with every arm at its home posture (no start pose)."""
        return None

    def lifted(self, bar_pose: np.ndarray, bar_start_xyz: np.ndarray) -> bool:
        """True when the bar (pose (7,) [x y z qx qy qz qw]) is ``lift_height`` above its start
        centre (3,) and level within ``max_tilt``."""
        from scipy.spatial.transform import Rotation

        p = np.asarray(bar_pose, float)
        axis = Rotation.from_quat(p[3:]).apply([0.0, 1.0, 0.0])
        tilt = float(np.arcsin(min(1.0, abs(axis[2]))))
        return bool(p[2] - float(bar_start_xyz[2]) >= self.lift_height and tilt <= self.max_tilt)

    def achieved(self, state, obj, cube_start_xyz: np.ndarray) -> bool:
        return self.lifted(obj.cube_pose, cube_start_xyz)

    def error_mm(self, state, obj) -> float:
        """Height of the bar's centre above the table's rest height, mm."""
        return (float(obj.cube_pose[2]) - self.bar_half[2]) * 1e3


TASKS = {"reach": ReachTask, "pick": PickTask, "press": PressTask, "lift": LiftTask}


def task_for_config(cfg) -> ReachTask:
    """The task of a stack config: its sim world's ``task`` (reach, pick, press or lift), turned to the front of
    the sim world's robot (its description's ``sim.workspace_yaw``). No sim world: the reach task."""
    from robot_stack.control.robot_model import load_description

    sims = [nc for nc in cfg.nodes.values() if nc.kind == "sim_world"]
    if not sims:
        return ReachTask()
    if sims[0].typed.task == "lift":
        return LiftTask()
    desc, _ = load_description(sims[0].typed.robot)
    return TASKS[sims[0].typed.task](yaw=float(desc.sim.workspace_yaw) if desc.sim is not None else 0.0)
