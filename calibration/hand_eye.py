"""Hand-eye calibration (OpenCV ``cv2.calibrateHandEye``, Park & Martin 1994 / Tsai & Lenz 1989),
refined on the board corners' reprojection error where the corners are given.

Two set-ups:

- eye-in-hand (wrist camera, board fixed in the world): solves T_gripper_camera;
- eye-to-hand (fixed camera, board on the gripper): solves T_base_camera, by feeding OpenCV the
  inverted robot poses (base -> gripper), the standard trick from the OpenCV docs.

"gripper" is the robot's TCP frame as it reports it (``RobotState.ee_pose``). Inputs are 4x4
homogeneous transforms; ``T_a_b`` maps points in frame b to frame a.

The closed-form solvers work on relative motions of PnP board poses. PnP's depth and tilt errors
(fractions of a mm and a degree for a small board a metre away) reach the camera translation
multiplied by the lever arm: 0.2 deg at 1 m is 3.5 mm. Given the detected corners and K, the
closed-form result seeds a joint least-squares refinement of both unknowns (the camera transform
and the board's transform in the other frame) on the corners' pixel error over all samples, the
maximum-likelihood estimate under pixel noise (Tabb & Yousef 2017, "Solving the robot-world
hand-eye(s) calibration problem with iterative methods"; Koide & Menegatti 2019).

Residuals: the solved transform predicts a quantity that must be the same in every sample (the
board in the base frame for eye-in-hand, the board in the gripper frame for eye-to-hand); its
spread (RMS and max deviation from the mean) is reported in mm and degrees.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

MIN_POSES = 5


class CalibrationError(RobotStackError, RuntimeError):
    """Calibration inputs cannot give a trustworthy result (too few poses, degenerate motion, ...)."""


@dataclass
class HandEyeResult:
    """Result of a hand-eye solve.

    Attributes:
        mode: "eye_in_hand" or "eye_to_hand".
        T: (4, 4) T_gripper_camera (eye-in-hand) or T_base_camera (eye-to-hand).
        residual_rms_mm, residual_max_mm: translation spread of the invariant, mm.
        residual_rms_deg, residual_max_deg: rotation spread of the invariant, deg.
        n_poses: samples used.
        reprojection_rms_px: RMS pixel error of all board corners reprojected through the solved
            transforms (None when no corners were given: closed form only).
    """

    mode: str
    T: np.ndarray
    residual_rms_mm: float
    residual_max_mm: float
    residual_rms_deg: float
    residual_max_deg: float
    n_poses: int
    reprojection_rms_px: float | None = None


def pose_to_T(pose: np.ndarray) -> np.ndarray:
    """[x y z qx qy qz qw] -> 4x4."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(pose[3:]).as_matrix()
    T[:3, 3] = pose[:3]
    return T


def inv(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform."""
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def check_motion(T_base_gripper: list[np.ndarray], min_rotation_deg: float = 10.0) -> None:
    """Refuse pose sets that cannot determine the hand-eye transform.

    Needs at least ``MIN_POSES`` poses, relative rotations of at least ``min_rotation_deg`` and
    rotation axes that are not all parallel (rotations about one axis leave the translation along
    it unobservable; Tsai & Lenz 1989).

    Raises:
        CalibrationError: naming the problem.
    """
    n = len(T_base_gripper)
    if n < MIN_POSES:
        raise CalibrationError(f"{n} usable poses; hand-eye calibration needs at least {MIN_POSES}")
    axes, angles = [], []
    for i in range(n):
        for j in range(i + 1, n):
            rv = Rotation.from_matrix(T_base_gripper[i][:3, :3].T @ T_base_gripper[j][:3, :3]).as_rotvec()
            a = np.linalg.norm(rv)
            angles.append(np.degrees(a))
            if a > 1e-6:
                axes.append(rv / a)
    if max(angles, default=0.0) < min_rotation_deg:
        raise CalibrationError(
            f"degenerate motion: the poses differ by at most {max(angles, default=0):.1f} deg of "
            f"rotation; rotate the gripper by at least {min_rotation_deg:.0f} deg between poses"
        )
    sv = np.linalg.svd(np.array(axes), compute_uv=False)
    if len(sv) < 2 or sv[1] / sv[0] < 0.2:
        raise CalibrationError(
            "degenerate motion: all rotations are about (nearly) one axis; rotate about at least two different axes"
        )


def _chain(mode: str, Tg: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """T_camera_board predicted for robot pose ``Tg`` by camera transform X and board transform Y."""
    return inv(X) @ (Tg if mode == "eye_to_hand" else inv(Tg)) @ Y


def _vec_to_T(v: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(v[:3]).as_matrix()
    out[:3, 3] = v[3:]
    return out


def _T_to_vec(T: np.ndarray) -> np.ndarray:
    return np.concatenate([Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]])


def refine_reprojection(
    T_base_gripper: list[np.ndarray],
    corners: list[tuple[np.ndarray, np.ndarray]],
    K: np.ndarray,
    mode: str,
    X0: np.ndarray,
    Y0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Jointly refine the hand-eye transform X and the board transform Y on corner pixel error.

    Model: board corner ``p`` (board frame, m) of sample i projects to
    ``K * (_chain(mode, T_base_gripper[i], X, Y) @ p)``; X is T_base_camera (eye-to-hand) or
    T_gripper_camera (eye-in-hand), Y is T_gripper_board or T_base_board. Robot poses are taken
    as exact. Levenberg-Marquardt-style trust-region least squares (scipy ``least_squares``) on
    12 parameters (two rotation vectors, two translations) from the closed-form seed.

    Args:
        T_base_gripper: (4, 4) robot TCP poses in the base frame, one per sample.
        corners: per sample, (object points (N, 3) in the board frame, m; image points (N, 2), px).
        K: (3, 3) intrinsics of the (undistorted) image.
        X0, Y0: (4, 4) seeds.

    Returns:
        (X, Y, RMS reprojection error in px).
    """
    from scipy.optimize import least_squares

    K = np.asarray(K, dtype=float)
    obj = [np.asarray(o, dtype=float).reshape(-1, 3) for o, _ in corners]
    img = [np.asarray(i, dtype=float).reshape(-1, 2) for _, i in corners]
    Tg = [np.asarray(T, dtype=float) for T in T_base_gripper]

    def residual(v: np.ndarray) -> np.ndarray:
        X, Y = _vec_to_T(v[:6]), _vec_to_T(v[6:])
        out = []
        for T, o, i in zip(Tg, obj, img):
            Tcb = _chain(mode, T, X, Y)
            pc = o @ Tcb[:3, :3].T + Tcb[:3, 3]
            uv = pc @ K.T
            out.append((uv[:, :2] / uv[:, 2:3] - i).ravel())
        return np.concatenate(out)

    sol = least_squares(residual, np.concatenate([_T_to_vec(X0), _T_to_vec(Y0)]), x_scale="jac", method="lm")
    r = sol.fun.reshape(-1, 2)
    return _vec_to_T(sol.x[:6]), _vec_to_T(sol.x[6:]), float(np.sqrt(np.mean(np.sum(r**2, axis=1))))


def solve_hand_eye(
    T_base_gripper: list[np.ndarray],
    T_camera_board: list[np.ndarray],
    mode: str,
    method: int = cv2.CALIB_HAND_EYE_PARK,
    corners: list[tuple[np.ndarray, np.ndarray]] | None = None,
    K: np.ndarray | None = None,
) -> HandEyeResult:
    """Solve hand-eye calibration: closed form, then (given ``corners`` and ``K``) refined on the
    corners' reprojection error (:func:`refine_reprojection`).

    Args:
        T_base_gripper: robot TCP poses in the base frame, one per sample.
        T_camera_board: board poses in the camera frame, same samples.
        mode: "eye_in_hand" or "eye_to_hand".
        method: OpenCV hand-eye method for the closed-form seed.
        corners: optional per-sample (object points (N, 3), m; image points (N, 2), px).
        K: (3, 3) intrinsics, needed with ``corners``.

    Raises:
        CalibrationError: mismatched inputs, too few poses, degenerate motion.
    """
    if mode not in ("eye_in_hand", "eye_to_hand"):
        raise ValueError(f"mode must be eye_in_hand or eye_to_hand, got {mode!r}")
    if len(T_base_gripper) != len(T_camera_board):
        raise CalibrationError(f"{len(T_base_gripper)} robot poses but {len(T_camera_board)} board poses")
    check_motion(T_base_gripper)
    robot = T_base_gripper if mode == "eye_in_hand" else [inv(T) for T in T_base_gripper]
    R, t = cv2.calibrateHandEye(
        [T[:3, :3] for T in robot],
        [T[:3, 3] for T in robot],
        [T[:3, :3] for T in T_camera_board],
        [T[:3, 3] for T in T_camera_board],
        method=method,
    )
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R, t.ravel()
    reproj = None
    if corners is not None:
        if K is None or len(corners) != len(T_base_gripper):
            raise CalibrationError(
                f"corner refinement needs K and one corner set per pose "
                f"({len(corners)} sets for {len(T_base_gripper)} poses)"
            )
        inv_ = _invariants(mode, T_base_gripper, T_camera_board, X)
        Y0 = np.eye(4)
        Y0[:3, 3] = np.mean([T[:3, 3] for T in inv_], axis=0)
        Y0[:3, :3] = Rotation.from_matrix(np.array([T[:3, :3] for T in inv_])).mean().as_matrix()
        X, _, reproj = refine_reprojection(T_base_gripper, corners, K, mode, X, Y0)
    inv_ = _invariants(mode, T_base_gripper, T_camera_board, X)
    pos = np.array([T[:3, 3] for T in inv_])
    dpos = np.linalg.norm(pos - pos.mean(0), axis=1) * 1e3
    rots = Rotation.from_matrix(np.array([T[:3, :3] for T in inv_]))
    mean_rot = rots.mean()
    drot = np.degrees((mean_rot.inv() * rots).magnitude())
    return HandEyeResult(
        mode,
        X,
        float(np.sqrt(np.mean(dpos**2))),
        float(dpos.max()),
        float(np.sqrt(np.mean(drot**2))),
        float(drot.max()),
        len(inv_),
        reproj,
    )


def _invariants(mode: str, T_base_gripper, T_camera_board, X: np.ndarray) -> list[np.ndarray]:
    """The transform that must be the same in every sample: the board in the base frame
    (eye-in-hand) or in the gripper frame (eye-to-hand)."""
    if mode == "eye_in_hand":
        return [Tg @ X @ Tc for Tg, Tc in zip(T_base_gripper, T_camera_board)]
    return [inv(Tg) @ X @ Tc for Tg, Tc in zip(T_base_gripper, T_camera_board)]


def transform_error(T_est: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """(translation error m, rotation error deg) between two transforms."""
    dt = float(np.linalg.norm(T_est[:3, 3] - T_true[:3, 3]))
    dr = float(np.degrees(Rotation.from_matrix(T_est[:3, :3].T @ T_true[:3, :3]).magnitude()))
    return dt, dr
