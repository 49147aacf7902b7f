"""The simulated robot and cameras: physics, joint impedance control, offscreen rendering.

:class:`SimWorld` is plain logic (no sockets): the sim-world node steps it in real time and
publishes what it measures; tests use it directly.

Rendering (:class:`SimRenderer`) uses MuJoCo's low-level API so that one ``mjr_render`` yields
both color and depth via ``mjr_readPixels``; the OpenGL depth buffer value z in [0, 1] is mapped
to metres with the standard perspective inverse ``d = near / (1 - z (1 - near / far))``
(near/far = ``vis.map.znear/zfar`` x ``stat.extent``, as in ``mujoco.Renderer``).
"""

from __future__ import annotations

import threading

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from robot_stack.drivers.camera import pinhole_K
from robot_stack.drivers.sim_model import (
    CUBE_HALF,
    ArmIndex,
    SceneSpec,
    _bodies_below,
    build_model,
    gripper_ctrl_from_open,
    gripper_width_from_driver,
    joint_pd_torque,
)


class SimWorld:
    """MuJoCo world with its arms under joint impedance control: one arm (``scene.robot``, named
    "") or the arms of a multi-arm scene (``scene.arms``, by name). Methods taking ``arm`` default
    to the first arm; poses are in the world frame (the one arm's base frame in a one-arm scene).

    Args:
        scene: scene options.
        seed: seed of the cube-pose randomization.
    """

    CUBE_X = (0.40, 0.60)
    CUBE_Y = (-0.20, 0.15)

    def __init__(self, scene: SceneSpec = SceneSpec(), seed: int = 0):
        self.scene = scene
        self.model = build_model(scene)
        self.data = mujoco.MjData(self.model)
        #: arm name -> its addresses ("" in a one-arm scene)
        self.arms = {a.name: ArmIndex.of(self.model, a.robot, f"{a.name}/") for a in scene.arms} or {
            "": ArmIndex.of(self.model, scene.robot)
        }
        self.arm = next(iter(self.arms.values()))
        self.rng = np.random.default_rng(seed)
        cube_j = self.model.joint("cube").id
        self._cube_qpos = int(self.model.jnt_qposadr[cube_j])
        self._cube_dof = int(self.model.jnt_dofadr[cube_j])
        self.lock = threading.Lock()  # held while physics changes data (renderer reads under it)
        self.targets = {n: (a.home_q.copy(), 1.0) for n, a in self.arms.items()}  # name -> (q rad, gripper open)
        self._tool_geom: dict[str, np.ndarray] = {}
        self._contact_classes()
        self.reset()

    def _contact_classes(self) -> None:
        """Who owns each body, for :attr:`robot_contacts`: arm k (its moving links and tool),
        scene (welded to the world: the floor as table top, the arms' bases, fixtures) or object
        (free bodies such as the cube)."""
        m = self.model
        self._owner = np.where(m.body_weldid == 0, -1, -2)  # -1 scene, -2 object
        self._tool = np.zeros(m.nbody, bool)
        for k, a in enumerate(self.arms.values()):
            first = int(m.jnt_bodyid[m.dof_jntid[a.dof[0]]])  # the arm's first moving body
            self._owner[first] = k
            self._owner[_bodies_below(m, first)] = k
            self._tool[a.tool_bodies] = True
        #: physics steps with a contact between a robot and the scene or another robot (or itself),
        #: other than its tool with an object or the tool's own parts (bench/faults.py counts these)
        self.robot_contacts = 0
        #: the first such pairs seen, as (body, body) names
        self.robot_contact_pairs: list[tuple[str, str]] = []

    def _index(self, arm: str | None) -> tuple[str, ArmIndex]:
        name = next(iter(self.arms)) if arm is None else arm
        if name not in self.arms:
            raise KeyError(f"no arm {name!r} in this world (arms: {sorted(self.arms)})")
        return name, self.arms[name]

    @property
    def q_target(self) -> np.ndarray:
        """The first arm's joint targets, rad."""
        return self.targets[next(iter(self.arms))][0]

    @property
    def gripper_open(self) -> float:
        """The first arm's gripper opening target in [0, 1]."""
        return self.targets[next(iter(self.arms))][1]

    @property
    def dt(self) -> float:
        """Physics step, s."""
        return float(self.model.opt.timestep)

    def reset(
        self, cube_pose: np.ndarray | None = None, cube_range: tuple | None = None, max_yaw: float = np.pi / 4
    ) -> np.ndarray:
        """Arm home, gripper open, cube at ``cube_pose`` (7,) or a random pose (x and y uniform in
        ``cube_range`` ((x lo, x hi), (y lo, y hi)) m, default ``CUBE_X``, ``CUBE_Y``; yaw uniform
        in +-``max_yaw`` rad); returns the cube pose."""
        with self.lock:
            mujoco.mj_resetData(self.model, self.data)
            for n, a in self.arms.items():
                self.data.qpos[a.qpos] = a.home_q
                self.targets[n] = (a.home_q.copy(), 1.0)
            if cube_pose is None:
                yaw = self.rng.uniform(-max_yaw, max_yaw)
                rx, ry = cube_range or (self.CUBE_X, self.CUBE_Y)
                xy = self.scene.to_base([self.rng.uniform(*rx), self.rng.uniform(*ry)])
                cube_pose = np.array(
                    [*xy, self.scene.cube_half[2], *Rotation.from_euler("z", yaw + self.scene.yaw).as_quat()]
                )
            q = self.data.qpos
            q[self._cube_qpos : self._cube_qpos + 3] = cube_pose[:3]
            x, y, z, w = cube_pose[3:]
            q[self._cube_qpos + 3 : self._cube_qpos + 7] = [w, x, y, z]  # MuJoCo quaternions are scalar-first
            mujoco.mj_forward(self.model, self.data)
        return np.asarray(cube_pose, float)

    #: press task: range of the cube's contact time constant (MuJoCo ``solref[0]``), s; log-uniform
    SOFTNESS = (0.02, 0.15)

    def randomize_cube_softness(self, timeconst: float | None = None) -> float:
        """Give the cube a contact time constant (MuJoCo ``geom_solref[0]``, s; default a
        log-uniform draw from ``SOFTNESS``): how far a press sinks in for a given force, which the
        cameras cannot see (the press task's hidden variable; the force it gives at a fixed depth
        is on the press task's results page, docs/results/press.md). Returns it."""
        if timeconst is None:
            timeconst = float(np.exp(self.rng.uniform(*np.log(self.SOFTNESS))))
        with self.lock:
            self.model.geom_solref[self.model.geom("cube").id, 0] = timeconst
        return timeconst

    def set_target(self, q_target: np.ndarray, gripper_open: float, arm: str | None = None) -> None:
        """Joint position targets (rad) and gripper opening in [0, 1] for ``arm``'s impedance controller.

        Raises:
            KeyError: no such arm. ValueError: a target of the wrong length.
        """
        name, a = self._index(arm)
        q = np.asarray(q_target, float).copy()
        if q.shape != a.home_q.shape:
            raise ValueError(f"arm {name!r} has {len(a.home_q)} joints, the target {q.shape}")
        self.targets[name] = (q, float(gripper_open))

    def step(self, n: int = 1) -> None:
        """Advance physics by ``n`` steps under every arm's impedance controller."""
        d, m = self.data, self.model
        arms = [(a, *self.targets[k]) for k, a in self.arms.items()]
        with self.lock:
            for _ in range(n):
                for a, q_t, g in arms:
                    d.ctrl[a.act] = joint_pd_torque(
                        d.qpos[a.qpos], d.qvel[a.dof], q_t, d.qfrc_bias[a.dof], a.torque_limit, a.kp, a.kd
                    )
                    d.ctrl[a.gripper_act] = gripper_ctrl_from_open(g, a.gripper_ctrl_closed)
                mujoco.mj_step(m, d)
                if d.ncon:
                    self._count_contacts()

    def _count_contacts(self) -> None:
        d, m = self.data, self.model
        n = d.ncon
        b1 = m.geom_bodyid[d.contact.geom1[:n]]
        b2 = m.geom_bodyid[d.contact.geom2[:n]]
        o1, o2, t1, t2 = self._owner[b1], self._owner[b2], self._tool[b1], self._tool[b2]
        robot = (o1 >= 0) | (o2 >= 0)
        allowed = (t1 & (o2 == -2)) | (t2 & (o1 == -2)) | ((o1 == o2) & t1 & t2)
        bad = robot & ~allowed & (d.contact.dist[:n] <= 0)
        if bad.any():
            self.robot_contacts += 1
            if len(self.robot_contact_pairs) < 8:
                i = int(np.flatnonzero(bad)[0])
                pair = (m.body(int(b1[i])).name, m.body(int(b2[i])).name)
                if pair not in self.robot_contact_pairs:
                    self.robot_contact_pairs.append(pair)

    def joint_state(self, arm: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(q rad, dq rad/s, tau N m, gripper width m) of ``arm``."""
        a, d = self._index(arm)[1], self.data
        return (
            d.qpos[a.qpos].copy(),
            d.qvel[a.dof].copy(),
            d.ctrl[a.act].copy(),
            gripper_width_from_driver(float(d.qpos[a.gripper_qpos]), a.gripper_stroke, a.gripper_closed),
        )

    def tcp_wrench(self, arm: str | None = None) -> np.ndarray:
        """(6,) external wrench on the tool at the TCP: [fx fy fz] N and [tx ty tz] N m about the
        TCP point, base frame; what the environment exerts on the gripper, as a wrist F/T sensor
        reports it after gravity compensation (and Franka's ``O_F_ext_hat_K`` in sign and frame;
        libfranka docs, ``franka::RobotState``). Sum of the contact forces between the bodies past
        the flange (``ArmIndex.tool_bodies``) and everything else (``mj_contactForce``, MuJoCo
        docs: the force in the contact frame, acting on geom2 from geom1). Noise-free. In a
        multi-arm scene: in the world frame (the sim world node publishes it in the arm's base frame)."""
        m, d = self.model, self.data
        name, a = self._index(arm)
        out = np.zeros(6)
        if d.ncon == 0:
            return out
        if name not in self._tool_geom:  # per geom: is it on this arm's tool (past the flange)?
            self._tool_geom[name] = np.isin(m.geom_bodyid, a.tool_bodies)
        tool = self._tool_geom[name]
        on1 = tool[d.contact.geom1[: d.ncon]]
        on2 = tool[d.contact.geom2[: d.ncon]]
        tcp = d.site_xpos[a.tcp_site]
        f6 = np.zeros(6)
        for i in np.flatnonzero(on1 != on2):  # tool against the rest (not finger on finger)
            c = d.contact[i]
            in1 = bool(on1[i])
            mujoco.mj_contactForce(m, d, int(i), f6)
            f = c.frame.reshape(3, 3).T @ f6[:3]  # on geom2 from geom1, world frame
            if in1:
                f = -f  # the tool is geom1: it feels the opposite
            out[:3] += f
            out[3:] += np.cross(c.pos - tcp, f)
        return out

    def set_qpos(self, qpos: np.ndarray) -> None:
        """Overwrite the full state with ``qpos`` (nq,) and update kinematics (renderer copies)."""
        if qpos.shape != (self.model.nq,):
            raise ValueError(
                f"qpos has shape {qpos.shape}, this model needs ({self.model.nq},): "
                "the world and the camera were built from different scenes"
            )
        with self.lock:
            self.data.qpos[:] = qpos
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_camlight(self.model, self.data)

    def cube_pose(self) -> np.ndarray:
        """(7,) cube pose [x y z qx qy qz qw] in the base frame."""
        q = self.data.qpos[self._cube_qpos : self._cube_qpos + 7]
        return np.array([*q[:3], q[4], q[5], q[6], q[3]])

    def tcp_pose(self, arm: str | None = None) -> np.ndarray:
        """(7,) TCP (pinch site) pose of ``arm`` in the world frame (a one-arm scene: its base frame)."""
        s = self._index(arm)[1].tcp_site
        return np.array(
            [*self.data.site_xpos[s], *Rotation.from_matrix(self.data.site_xmat[s].reshape(3, 3)).as_quat()]
        )

    def target_xy(self) -> np.ndarray:
        """(2,) centre of the target region in the base frame, m."""
        return self.scene.to_base(self.scene.target_xy)

    def cube_in_target(self) -> bool:
        """Success check: the cube's centre lies inside the target square and it rests on the table."""
        c = self.cube_pose()
        tx, ty = self.target_xy()
        h = self.scene.target_half
        return bool(abs(c[0] - tx) <= h and abs(c[1] - ty) <= h and c[2] < 2.5 * CUBE_HALF)


class SimRenderer:
    """Offscreen RGB-D rendering of one world's fixed cameras (create and use in one thread).

    Args:
        world: the world to render.
        width, height: image size, pixels.
        multisample: MSAA samples of the offscreen buffer (MuJoCo ``vis.quality.offsamples``; 0:
            none, as a real camera's image has none). Set before the GL context is made, on this
            process's own copy of the model. With Mesa llvmpipe 4 samples cost about 2x the time
            of none on the scene camera (figures: the sim camera driver's ``multisample``).
    """

    def __init__(self, world: SimWorld, width: int, height: int, multisample: int = 0):
        self.world, self.width, self.height = world, width, height
        m = world.model
        if not 0 <= int(multisample) <= 16:
            raise ValueError(f"multisample must be 0..16, got {multisample}")
        m.vis.quality.offsamples = int(multisample)
        self._gl = mujoco.GLContext(max(width, 1280), max(height, 960))
        self._gl.make_current()
        self._con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scn = mujoco.MjvScene(m, maxgeom=2000)
        self._opt = mujoco.MjvOption()
        self._pert = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._vp = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), np.uint8)
        self._z = np.empty((height, width), np.float32)
        self.near = float(m.vis.map.znear * m.stat.extent)
        self.far = float(m.vis.map.zfar * m.stat.extent)

    def extrinsics(self, camera: str) -> np.ndarray:
        """(4, 4) ``T_base_camera`` of a fixed ``camera``: maps points in the camera frame (OpenCV
        axes: x right, y down, z forward) into the base frame, m. MuJoCo's camera frame looks
        along -z with y up, so its rotation is turned by diag(1, -1, -1). The ground truth a
        hand-eye calibration of this camera estimates."""
        m, d = self.world.model, self.world.data
        cid = m.camera(camera).id
        with self.world.lock:
            mujoco.mj_kinematics(m, d)
            R = d.cam_xmat[cid].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
            pos = d.cam_xpos[cid].copy()
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, pos
        return T

    def intrinsics(self, camera: str) -> np.ndarray:
        """(3, 3) pinhole intrinsics of ``camera`` at this render size (pixels)."""
        return pinhole_K(self.width, self.height, float(self.world.model.cam_fovy[self.world.model.camera(camera).id]))

    def render(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """Render ``camera`` from the world's current state.

        Returns:
            color (H, W, 3) uint8 RGB and depth (H, W) float32 metres (0 beyond the far plane).
        """
        self._cam.fixedcamid = self.world.model.camera(camera).id
        with self.world.lock:  # copy the scene out of MjData; render outside the lock
            mujoco.mjv_updateScene(
                self.world.model,
                self.world.data,
                self._opt,
                self._pert,
                self._cam,
                mujoco.mjtCatBit.mjCAT_ALL,
                self._scn,
            )
        mujoco.mjr_render(self._vp, self._scn, self._con)
        mujoco.mjr_readPixels(self._rgb, self._z, self._vp, self._con)
        color = np.flipud(self._rgb).copy()
        z = np.flipud(self._z)
        depth = self.near / (1.0 - z * (1.0 - self.near / self.far))
        depth[z >= 1.0] = 0.0
        return color, depth.astype(np.float32)

    def close(self) -> None:
        try:
            self._con.free()
            self._gl.free()
        except Exception:  # EGL teardown errors at exit are harmless
            pass


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres like a RealSense (depth scale 0.001); 0 = invalid/out of range."""
    mm = np.round(depth_m * 1000.0)
    mm[(mm <= 0) | (mm > 65535)] = 0
    return mm.astype(np.uint16)
