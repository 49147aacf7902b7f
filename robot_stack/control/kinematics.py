"""Forward and inverse kinematics from a MuJoCo model of the arm.

FK reads the TCP site pose after ``mj_kinematics``; IK is damped least squares on the site Jacobian
(``mj_jacSite``) with joint-limit clamping (Nakamura & Hanafusa 1986; Buss 2004, "Introduction to
Inverse Kinematics with Jacobian Transpose, Pseudoinverse and Damped Least Squares methods").
Poses are [x y z qx qy qz qw] in the robot base frame (= MuJoCo world frame of the model).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation


class IKError(RobotStackError, RuntimeError):
    """IK did not reach the target within tolerance (target out of reach or at a singularity)."""


class Kinematics:
    """FK/IK of one arm in a MuJoCo model (uses its own MjData; not thread-safe). A robot's
    :class:`~robot_stack.control.robot_model.RobotModel` builds one from the robot's description file.

    Args:
        model: compiled model containing the arm.
        qpos_adr, dof_adr: (n,) addresses of the arm joints in qpos and in the dofs.
        site_id: TCP site id.
        lower, upper: (n,) joint limits, rad.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        qpos_adr: np.ndarray,
        dof_adr: np.ndarray,
        site_id: int,
        lower: np.ndarray,
        upper: np.ndarray,
    ):
        self.model = model
        self.data = mujoco.MjData(model)
        self.qpos_adr, self.dof_adr, self.site = qpos_adr, dof_adr, site_id
        self.lower, self.upper = lower, upper
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))

    def fk(self, q: np.ndarray) -> np.ndarray:
        """(7,) TCP pose in the base frame for joint positions ``q`` (rad)."""
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        out = np.empty(7)
        out[:3] = self.data.site_xpos[self.site]
        out[3:] = Rotation.from_matrix(self.data.site_xmat[self.site].reshape(3, 3)).as_quat()
        return out

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """(6, n) TCP site Jacobian at ``q`` (rad) in the base frame: linear rows (m/rad) first,
        then angular (rad/rad) (MuJoCo ``mj_jacSite``)."""
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
        return np.vstack([self._jp[:, self.dof_adr], self._jr[:, self.dof_adr]])

    def ik(
        self,
        target: np.ndarray,
        q_seed: np.ndarray,
        iters: int = 50,
        tol_m: float = 1e-4,
        tol_rad: float = 1e-3,
        damping: float = 0.05,
        raise_on_fail: bool = True,
        margin: float = 0.0,
    ) -> np.ndarray:
        """Joint positions reaching the TCP pose ``target``, starting from ``q_seed``, kept
        ``margin`` (rad) inside the joint limits at every iteration (so a caller that clamps with
        that margin, like the servo guard, never has to: the other joints make up for it).

        Raises:
            IKError: if the tolerance is not met after ``iters`` (only when ``raise_on_fail``).
        """
        lo, hi = self.lower + margin, self.upper - margin
        q = np.clip(np.asarray(q_seed, float).copy(), lo, hi)
        # rotation error with MuJoCo's quaternion routines (scalar-first), cheap enough for 500 Hz
        x, y, z, w = target[3:]
        q_t = np.array([w, x, y, z]) / np.linalg.norm(target[3:])
        q_c = np.empty(4)
        e_rot = np.empty(3)
        lam2 = damping**2
        e = np.empty(6)
        for _ in range(iters):
            self.data.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(self.model, self.data)
            e_pos = target[:3] - self.data.site_xpos[self.site]
            mujoco.mju_mat2Quat(q_c, self.data.site_xmat[self.site])
            mujoco.mju_subQuat(e_rot, q_t, q_c)  # body-frame rotation taking q_c to q_t
            mujoco.mju_rotVecQuat(e_rot, e_rot.copy(), q_c)  # expressed in the base frame
            if np.linalg.norm(e_pos) < tol_m and np.linalg.norm(e_rot) < tol_rad:
                return q
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
            J = np.vstack([self._jp[:, self.dof_adr], self._jr[:, self.dof_adr]])
            e[:3], e[3:] = e_pos, e_rot
            dq = J.T @ np.linalg.solve(J @ J.T + lam2 * np.eye(6), e)
            q = np.clip(q + dq, lo, hi)
        if raise_on_fail:
            raise IKError(
                f"IK did not converge: position error {np.linalg.norm(e_pos) * 1e3:.1f} mm, "
                f"rotation error {np.degrees(np.linalg.norm(e_rot)):.2f} deg"
            )
        return q
