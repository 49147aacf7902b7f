"""The MuJoCo scene of the simulation backend.

Robot: the robot model ``panda_robotiq`` (``robot_stack/robots/panda_robotiq.yaml``): the MuJoCo
Menagerie Franka Emika Panda with a Robotiq 2F-85 gripper, as shipped in the ``gym-hil`` PyPI
package (``gym_hil/assets/panda.xml``, Apache-2.0). Only its asset files are read (the package is
never imported), so no download happens at run time. The arm node uses the same model.

The scene adds, with ``mujoco.MjSpec``: a floor that serves as the table top (z = 0 in the robot
base frame), a 4 cm cube on a free joint, a flat target region (visual only), lights, a fixed scene
camera looking at the workspace and the model's own wrist camera (``handcam_rgb``). Frames: the
world frame is the robot base frame.

Arm joints 1-7 of this model are torque-driven (gain 1, no bias); :func:`joint_pd_torque` is the
joint impedance law the simulated "robot controller box" applies at the physics rate.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import functools
from dataclasses import dataclass, field

import mujoco
import numpy as np

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
ARM_ACTUATORS = tuple(f"actuator{i}" for i in range(1, 8))
GRIPPER_ACTUATOR = "fingers_actuator"
GRIPPER_JOINT = "right_driver_joint"
TCP_SITE = "pinch"
SCENE_CAMERA = "scene"
TOP_CAMERA = "top"  # multi-arm scenes: looking down at the table
WRIST_CAMERA = "handcam_rgb"
HOME_Q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
# joint impedance gains (N m / rad, N m s / rad), the defaults of libfranka's joint impedance example
KP = np.array([600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0])
KD = np.array([50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0])
GRIPPER_MAX_WIDTH = 0.085  # m, Robotiq 2F-85 stroke
GRIPPER_DRIVER_RANGE = 0.8  # rad, driver joint range of the model
CUBE_HALF = 0.02


#: the robot a sim world plays when its params name none
DEFAULT_ROBOT = "panda_robotiq"


class SimModelError(RobotStackError, RuntimeError):
    """The robot model could not be found or built."""


TABLE_BOARD_DICT = "DICT_5X5_100"
GRIPPER_BOARD_DICT = "DICT_4X4_50"


@dataclass(frozen=True)
class ArmPlacement:
    """One arm of a multi-arm scene.

    Attributes:
        name: the arm's name; its prefix in the scene (joints ``<name>/joint1``, TCP site
            ``<name>/pinch``, wrist camera ``<name>/handcam_rgb``). Letters, digits and ``_``.
        robot: its robot model (a shipped name or a description YAML with a sim block).
        base: its base pose in the world frame: x y z (m) and yaw about z (rad).
    """

    name: str
    robot: str = "panda_robotiq"
    base: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"arm name {self.name!r}: use letters, digits and _")
        if len(self.base) != 4 or not np.all(np.isfinite(self.base)):
            raise ValueError(f"arm {self.name}: base must be 4 finite numbers (x y z m, yaw rad), got {self.base}")

    def T_world_base(self) -> np.ndarray:
        """(4, 4) pose of the arm's base in the world frame."""
        x, y, z, yaw = self.base
        T = np.eye(4)
        T[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]]
        T[:3, 3] = [x, y, z]
        return T


@dataclass(frozen=True)
class SceneSpec:
    """Scene options.

    Positions are given in front of the robot (x: its front) and turned into the base frame by the
    robot's ``sim.workspace_yaw`` (:meth:`to_base`).

    Attributes:
        robot: the simulated robot model (a shipped name or a description YAML with a sim block).
        width, height: render size of every camera, pixels.
        scene_cam_pos: scene camera position in the base frame, m.
        scene_cam_target: point the scene camera looks at, m.
        scene_cam_fovy: vertical field of view, deg.
        target_xy: centre of the target region, m; target_half: its half size, m.
        arms: a multi-arm scene (bimanual): every arm with its name, robot and base pose in the
            world frame (the table's), and a ``top`` camera looking down at the table. Empty (the
            default): one arm, ``robot``, whose base frame is the world frame.
        cube_half: half sizes (x y z) of the task object (the body and geom named ``cube``), m:
            the 4 cm cube by default; the bimanual lift task makes it a bar along y.
        cube_mass: its mass, kg.
    """

    robot: str = "panda_robotiq"
    width: int = 320
    height: int = 240
    scene_cam_pos: tuple[float, float, float] = (1.2, 0.0, 0.7)
    scene_cam_target: tuple[float, float, float] = (0.45, 0.0, 0.2)
    scene_cam_fovy: float = 55.0
    target_xy: tuple[float, float] = (0.45, 0.25)
    target_half: float = 0.05
    table_board: bool = False
    gripper_board: bool = False
    table_board_xy: tuple[float, float] = (0.50, -0.05)
    table_board_yaw: float = 0.3
    arms: tuple[ArmPlacement, ...] = ()
    top_cam_pos: tuple[float, float, float] = (0.45, 0.0, 1.25)
    top_cam_fovy: float = 60.0
    cube_half: tuple[float, float, float] = (CUBE_HALF, CUBE_HALF, CUBE_HALF)
    cube_mass: float = 0.05

    def __post_init__(self):
        if len(self.cube_half) != 3 or min(self.cube_half) <= 0 or self.cube_mass <= 0:
            raise ValueError(
                f"cube_half must be 3 positive half sizes (m) and cube_mass positive, got "
                f"{self.cube_half}, {self.cube_mass}"
            )
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must differ, got {names}")
        if self.arms and (self.table_board or self.gripper_board):
            raise ValueError("the calibration boards are modelled in one-arm scenes only")

    @property
    def yaw(self) -> float:
        """The robot's ``sim.workspace_yaw``, rad (0 in a multi-arm scene: its world frame is the table's)."""
        return 0.0 if self.arms else float(sim_description(self.robot).sim.workspace_yaw)

    def to_base(self, p) -> np.ndarray:
        """A point (x y [z]) laid out in front of the robot, in the base frame."""
        p = np.asarray(p, float).copy()
        c, s_ = np.cos(self.yaw), np.sin(self.yaw)
        p[:2] = [c * p[0] - s_ * p[1], s_ * p[0] + c * p[1]]
        return p


@functools.lru_cache(maxsize=16)
def sim_description(robot: str):
    """The description of a robot the sim can play (its ``sim`` block is required; read once
    per process: the sim world asks for it at its object rate).

    Raises:
        SimModelError: unknown robot, or one without a sim block.
    """
    from robot_stack.control.robot_model import RobotModelError, load_description

    try:
        desc, _ = load_description(robot)
    except RobotModelError as e:
        raise SimModelError(str(e)) from None
    if desc.sim is None:
        raise SimModelError(f"robot {desc.name} has no sim block in its description: the sim cannot play it")
    return desc


def _look_at_xyaxes(pos: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> list[float]:
    """MuJoCo camera ``xyaxes`` so that the camera at ``pos`` looks at ``target`` with z up.

    A MuJoCo camera looks along its -z axis with +y up in the image (MJCF reference, camera/xyaxes).
    """
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return [*x, *y]


def build_model(scene: SceneSpec = SceneSpec()) -> mujoco.MjModel:
    """Compile the scene.

    Raises:
        SimModelError: missing robot model or a compile error.
    """
    if not scene.arms:
        spec = _robot_spec(scene.robot)
    else:  # every arm's own model, attached at its base pose under its name
        spec = mujoco.MjSpec()
        for a in scene.arms:
            x, y, z, yaw = a.base
            frame = spec.worldbody.add_frame(pos=[x, y, z], quat=[np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
            try:
                spec.attach(_robot_spec(a.robot), frame=frame, prefix=f"{a.name}/")
            except ValueError as e:
                raise SimModelError(f"could not place arm {a.name}: {e}") from None
    spec.visual.global_.offwidth = max(scene.width, 1280)
    spec.visual.global_.offheight = max(scene.height, 960)
    spec.visual.quality.shadowsize = 0  # shadows off: CPU rendering budget
    spec.option.timestep = 0.002

    tex = spec.add_texture(
        name="grid",
        type=mujoco.mjtTexture.mjTEXTURE_2D,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        width=256,
        height=256,
        rgb1=[0.55, 0.5, 0.45],
        rgb2=[0.5, 0.45, 0.4],
    )
    mat = spec.add_material(name="table")
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "grid"
    mat.texrepeat = [8, 8]
    del tex

    wb = spec.worldbody
    wb.add_light(pos=[0, 0, 3], dir=[0, 0, -1], diffuse=[0.8, 0.8, 0.8], castshadow=False)
    wb.add_light(pos=[1.5, -1.0, 2.0], dir=[-1, 0.6, -1.2], diffuse=[0.4, 0.4, 0.4], castshadow=False)
    wb.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2, 2, 0.01], material="table")

    cube = wb.add_body(name="cube", pos=scene.to_base([0.5, 0.0, scene.cube_half[2]]).tolist())
    cube.add_freejoint(name="cube")
    cube.add_geom(
        name="cube",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=list(scene.cube_half),
        mass=scene.cube_mass,
        rgba=[0.15, 0.35, 0.85, 1],
        friction=[1.0, 0.01, 0.001],
    )

    wb.add_geom(
        name="target",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        pos=[*scene.to_base(scene.target_xy), 0.0005],
        euler=[0, 0, scene.yaw],
        size=[scene.target_half, scene.target_half, 0.0005],
        rgba=[0.85, 0.2, 0.2, 1],
        contype=0,
        conaffinity=0,
    )

    pos = scene.to_base(scene.scene_cam_pos)
    wb.add_camera(
        name=SCENE_CAMERA,
        pos=pos.tolist(),
        xyaxes=_look_at_xyaxes(pos, scene.to_base(scene.scene_cam_target)),
        fovy=scene.scene_cam_fovy,
    )
    if scene.arms:
        top = np.asarray(scene.top_cam_pos, float)
        wb.add_camera(
            name=TOP_CAMERA,
            pos=top.tolist(),
            fovy=scene.top_cam_fovy,
            xyaxes=_look_at_xyaxes(top, [top[0], top[1], 0.0], up=(1.0, 0.0, 0.0)),
        )
    if scene.table_board:
        hw, hh = _add_board_material(spec, "table_board", table_board_spec())
        wb.add_geom(
            name="table_board",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            pos=[*scene.to_base(scene.table_board_xy), BOARD_HALF_THICK],
            euler=[0, 0, scene.table_board_yaw + scene.yaw],
            size=[hw, hh, BOARD_HALF_THICK],
            material="table_board",
            contype=0,
            conaffinity=0,
        )
    if scene.gripper_board:
        if scene.robot != "panda_robotiq":
            raise SimModelError("the gripper-held calibration board is modelled on the Panda only")
        local = _gripper_board_local_pose(scene)
        hw, hh = _add_board_material(spec, "gripper_board", gripper_board_spec())
        spec.body(GRIPPER_BOARD_BODY).add_geom(
            name="gripper_board",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            pos=local[:3, 3].tolist(),
            quat=_mat_to_wxyz(local[:3, :3]),
            size=[hw, hh, BOARD_HALF_THICK],
            material="gripper_board",
            contype=0,
            conaffinity=0,
        )
    try:
        model = spec.compile()
    except Exception as e:  # mujoco raises ValueError with the compiler message
        raise SimModelError(f"could not compile the sim scene: {e}") from None
    return model


def _robot_spec(robot: str) -> mujoco.MjSpec:
    """One robot's spec for the scene: its own model (``robot_stack/robots/<robot>.yaml``, the one
    the arm node uses, so sim and arm node cannot disagree about the robot), the sim's torque
    motors and the description's sim cameras."""
    from robot_stack.control.robot_model import build_spec, load_description

    desc = sim_description(robot)
    spec = build_spec(*load_description(robot))
    _controller_box(spec, desc)
    for cam in desc.sim.cameras:
        body = spec.body(cam.body)
        if body is None:
            raise SimModelError(f"{desc.name}: sim camera {cam.name!r} on a body {cam.body!r} the model lacks")
        body.add_camera(
            name=cam.name,
            pos=list(cam.pos),
            fovy=cam.fovy,
            xyaxes=_look_at_xyaxes(np.array(cam.pos), np.array(cam.look_at), cam.up),
        )
    return spec


def _controller_box(spec: mujoco.MjSpec, desc) -> None:
    """Torque motors on the arm joints for the sim's joint impedance law: the MJCF's own (when
    ``sim.arm_actuators`` names them), else the MJCF's arm actuators are replaced by
    ``arm_motor1..n`` with the description's torque limits. Keyframes go (they size ``ctrl``)."""
    if desc.sim.arm_actuators is not None:
        return
    joints = set(desc.joints)
    for a in list(spec.actuators):
        if a.target in joints:
            spec.delete(a)
    for k in list(spec.keys):
        spec.delete(k)
    for i, (j, lim) in enumerate(zip(desc.joints, desc.sim.torque_limit)):
        a = spec.add_actuator(name=f"arm_motor{i + 1}", target=j, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.ctrlrange = [-lim, lim]
        a.ctrllimited = True


BOARD_HALF_THICK = 0.001
GRIPPER_BOARD_BODY = "base"


def table_board_spec():
    """The ChArUco board lying on the sim table (for eye-in-hand calibration of the wrist camera)."""
    from robot_stack.calibration.board import BoardSpec

    return BoardSpec(squares_x=7, squares_y=5, square_m=0.03, marker_m=0.022, dictionary=TABLE_BOARD_DICT)


def gripper_board_spec():
    """The ChArUco board held by the sim gripper (eye-to-hand calibration of the scene camera); it
    hangs in front of the fingers, in the wrist camera's view, so a scene has one board or the other."""
    from robot_stack.calibration.board import BoardSpec

    return BoardSpec(squares_x=7, squares_y=5, square_m=0.032, marker_m=0.024, dictionary=GRIPPER_BOARD_DICT)


def _add_board_material(spec: mujoco.MjSpec, name: str, board) -> tuple[float, float]:
    """Texture + material of a board image with a half-square white margin; returns box half sizes (m)."""
    img = board.image(px_per_square=64, margin_squares=0.5)
    tex = spec.add_texture(
        name=name, type=mujoco.mjtTexture.mjTEXTURE_2D, width=img.shape[1], height=img.shape[0], nchannel=3
    )
    tex.data = np.repeat(img[..., None], 3, axis=2).tobytes()
    mat = spec.add_material(name=name)
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = name
    w, h = board.size_m
    return (w + board.square_m) / 2, (h + board.square_m) / 2


def board_frame_in_geom(board) -> np.ndarray:
    """T_geom_board: the OpenCV board frame (origin at the chessboard's first corner) in the box
    geom's frame, for a board textured on the box's +z face (verified by rendering + solvePnP)."""
    w, h = board.size_m
    T = np.diag([1.0, -1.0, -1.0, 1.0])
    T[:3, 3] = [-w / 2, h / 2, BOARD_HALF_THICK]
    return T


def _mat_to_wxyz(R: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return [w, x, y, z]


def _gripper_board_local_pose(scene: SceneSpec) -> np.ndarray:
    """Board pose in the gripper base body: in front of the hand, facing the scene camera at home."""
    from robot_stack.control.robot_model import build_spec, load_description

    spec = build_spec(*load_description("panda_robotiq"))
    _controller_box(spec, sim_description("panda_robotiq"))
    m = spec.compile()
    d = mujoco.MjData(m)
    ix = ArmIndex.of(m)
    d.qpos[ix.qpos] = HOME_Q
    mujoco.mj_kinematics(m, d)
    b = m.body(GRIPPER_BOARD_BODY).id
    T_wb = np.eye(4)
    T_wb[:3, :3] = d.xmat[b].reshape(3, 3)
    T_wb[:3, 3] = d.xpos[b]
    center = d.site_xpos[ix.tcp_site] + np.array([0.08, 0.0, -0.02])
    z = np.array(scene.scene_cam_pos) - center
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T_wg = np.eye(4)
    T_wg[:3, :3] = np.stack([x, y, z], axis=1)
    T_wg[:3, 3] = center
    return np.linalg.inv(T_wb) @ T_wg


def camera_pose_cv(model: mujoco.MjModel, data: mujoco.MjData, camera: str) -> np.ndarray:
    """T_world_camera of a MuJoCo camera in OpenCV convention (x right, y down, z forward).

    A MuJoCo camera looks along its -z axis with y up; OpenCV's frame is that frame rotated by
    diag(1, -1, -1)."""
    c = model.camera(camera).id
    T = np.eye(4)
    T[:3, :3] = data.cam_xmat[c].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = data.cam_xpos[c]
    return T


def geom_pose(model: mujoco.MjModel, data: mujoco.MjData, geom: str) -> np.ndarray:
    """T_world_geom of a geom."""
    g = model.geom(geom).id
    T = np.eye(4)
    T[:3, :3] = data.geom_xmat[g].reshape(3, 3)
    T[:3, 3] = data.geom_xpos[g]
    return T


@dataclass(frozen=True)
class ArmIndex:
    """Addresses of the arm in a compiled scene, and the sim block of its description."""

    qpos: np.ndarray  # (n,) qpos addresses of the arm joints
    dof: np.ndarray  # (n,) dof addresses
    act: np.ndarray  # (n,) actuator ids
    gripper_act: int
    gripper_qpos: int
    tcp_site: int
    lower: np.ndarray
    upper: np.ndarray
    torque_limit: np.ndarray
    home_q: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    gripper_stroke: float
    gripper_closed: float
    gripper_ctrl_closed: float
    tool_bodies: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # bodies past the flange

    @staticmethod
    def of(model: mujoco.MjModel, robot: str = "panda_robotiq", prefix: str = "") -> ArmIndex:
        """The arm ``robot`` in ``model``; ``prefix``: its name prefix in a multi-arm scene ("left/")."""
        desc = sim_description(robot)
        sim = desc.sim
        jids = [model.joint(prefix + n).id for n in desc.joints]
        names = sim.arm_actuators or [f"arm_motor{i + 1}" for i in range(len(jids))]
        act = np.array([model.actuator(prefix + n).id for n in names])
        if desc.joint_range is not None:
            lower, upper = (np.asarray(desc.joint_range, float)[:, k].copy() for k in (0, 1))
        else:
            lower, upper = model.jnt_range[jids, 0].copy(), model.jnt_range[jids, 1].copy()
        return ArmIndex(
            qpos=np.array([model.jnt_qposadr[j] for j in jids]),
            dof=np.array([model.jnt_dofadr[j] for j in jids]),
            act=act,
            gripper_act=model.actuator(prefix + sim.gripper_actuator).id,
            gripper_qpos=int(model.jnt_qposadr[model.joint(prefix + sim.gripper_joint).id]),
            tcp_site=model.site(prefix + (desc.tcp_site or "tcp")).id,
            lower=lower,
            upper=upper,
            torque_limit=np.asarray(sim.torque_limit, float),
            home_q=np.asarray(desc.home_q, float),
            kp=np.asarray(sim.kp, float),
            kd=np.asarray(sim.kd, float),
            gripper_stroke=desc.gripper.stroke_m,
            gripper_closed=sim.gripper_joint_closed,
            gripper_ctrl_closed=sim.gripper_ctrl_closed,
            tool_bodies=_bodies_below(model, int(model.jnt_bodyid[jids[-1]])),
        )


def _bodies_below(model: mujoco.MjModel, body: int) -> np.ndarray:
    """Ids of the bodies whose ancestor chain passes through ``body`` (``body`` itself excluded):
    what a wrist F/T sensor on that body's flange carries (gripper, fingers, pads)."""
    out = []
    for b in range(model.nbody):
        p = b
        while p not in (0, body):
            p = int(model.body_parentid[p])
        if p == body and b != body:
            out.append(b)
    return np.array(out, int)


def joint_pd_torque(
    q: np.ndarray,
    dq: np.ndarray,
    q_target: np.ndarray,
    bias: np.ndarray,
    limit: np.ndarray,
    kp: np.ndarray = KP,
    kd: np.ndarray = KD,
) -> np.ndarray:
    """Joint impedance with gravity/Coriolis compensation: tau = KP (q* - q) - KD dq + bias.

    Args:
        q, dq: (n,) measured joint positions (rad) and velocities (rad/s).
        q_target: (n,) joint targets, rad.
        bias: (n,) MuJoCo ``qfrc_bias`` of the arm dofs (gravity + Coriolis), N m.
        limit: (n,) torque limits, N m.
        kp, kd: (n,) gains (default: the Panda's, libfranka's joint impedance example).
    Returns:
        (n,) joint torques, N m, clipped to the limits.
    """
    tau = kp * (q_target - q) - kd * dq + bias
    return np.clip(tau, -limit, limit)


def gripper_width_from_driver(
    q_driver: float, stroke: float = GRIPPER_MAX_WIDTH, closed: float = GRIPPER_DRIVER_RANGE
) -> float:
    """Approximate finger opening (m) from a gripper joint position (0 open .. ``closed``; the
    2F-85 driver joint: 0.8 rad closed), for a gripper of ``stroke`` m."""
    return float(stroke * np.clip(1.0 - q_driver / closed, 0.0, 1.0))


def gripper_ctrl_from_open(open_frac: float, closed_ctrl: float = 255.0) -> float:
    """Actuator control (0 open .. ``closed_ctrl`` closed) for an opening fraction in [0, 1]."""
    return float(closed_ctrl * (1.0 - np.clip(open_frac, 0.0, 1.0)))
