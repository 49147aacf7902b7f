"""Hand-eye solver on synthetic poses: exact recovery, noise, and refusal of bad inputs."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.calibration.hand_eye import (
    CalibrationError,
    inv,
    solve_hand_eye,
    transform_error,
)


def T(rotvec, t):
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = t
    return out


def random_poses(n, rng, rot_deg=25):
    base = T([np.pi, 0, 0], [0.45, 0.0, 0.35])
    return [base @ T(np.radians(rng.uniform(-rot_deg, rot_deg, 3)), rng.uniform(-0.05, 0.05, 3)) for _ in range(n)]


X_GRIPPER_CAM = T([0.1, -0.05, 1.6], [0.05, 0.01, -0.04])
X_BASE_CAM = T([2.0, 0.3, -0.5], [1.2, 0.1, 0.7])


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_exact_recovery(mode):
    rng = np.random.default_rng(1)
    Tg = random_poses(10, rng)
    if mode == "eye_in_hand":
        T_base_board = T([0, 0, 0.3], [0.5, 0.0, 0.0])
        Tc = [inv(X_GRIPPER_CAM) @ inv(g) @ T_base_board for g in Tg]
        truth = X_GRIPPER_CAM
    else:
        T_gripper_board = T([0.2, 0.1, 0], [0.0, 0.05, 0.08])
        Tc = [inv(X_BASE_CAM) @ g @ T_gripper_board for g in Tg]
        truth = X_BASE_CAM
    res = solve_hand_eye(Tg, Tc, mode)
    dt, dr = transform_error(res.T, truth)
    assert dt < 1e-6 and dr < 1e-5
    assert res.residual_max_mm < 1e-3 and res.n_poses == 10


def test_noisy_recovery_reports_residuals():
    rng = np.random.default_rng(2)
    Tg = random_poses(15, rng)
    T_base_board = T([0, 0, 0.3], [0.5, 0.0, 0.0])
    noise = lambda: T(np.radians(rng.normal(0, 0.1, 3)), rng.normal(0, 0.0005, 3))  # noqa: E731
    Tc = [inv(X_GRIPPER_CAM) @ inv(g) @ T_base_board @ noise() for g in Tg]
    res = solve_hand_eye(Tg, Tc, "eye_in_hand")
    dt, dr = transform_error(res.T, X_GRIPPER_CAM)
    assert dt < 0.003 and dr < 0.3
    assert 0.1 < res.residual_rms_mm < 5.0


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(3)
    Tg = random_poses(8, rng)
    with pytest.raises(CalibrationError, match="needs at least 5"):
        solve_hand_eye(Tg[:3], Tg[:3], "eye_in_hand")
    with pytest.raises(CalibrationError, match="robot poses but"):
        solve_hand_eye(Tg, Tg[:5], "eye_in_hand")
    translated_only = [Tg[0] @ T([0, 0, 0], [0.01 * i, 0, 0]) for i in range(6)]
    with pytest.raises(CalibrationError, match="degenerate motion: the poses differ by at most 0.0 deg"):
        solve_hand_eye(translated_only, translated_only, "eye_in_hand")
    one_axis = [Tg[0] @ T([0, 0, np.radians(10 * i)], [0.01 * i, 0, 0]) for i in range(6)]
    with pytest.raises(CalibrationError, match="about \\(nearly\\) one axis"):
        solve_hand_eye(one_axis, one_axis, "eye_in_hand")


def _board_corners(n_x=6, n_y=4, square=0.032):
    xs, ys = np.meshgrid(np.arange(n_x) * square, np.arange(n_y) * square)
    return np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)


@pytest.mark.parametrize("mode", ["eye_to_hand", "eye_in_hand"])
def test_corner_refinement_beats_closed_form_under_pixel_noise(mode):
    """A small board a metre from the camera, 0.1 px corner noise: PnP's depth/tilt errors reach
    the closed-form camera translation times the lever arm; refining on the corners removes it."""
    import cv2

    from robot_stack.calibration.board import board_pose

    rng = np.random.default_rng(4)
    K = np.array([[1100.0, 0, 640], [0, 1100.0, 480], [0, 0, 1]])
    obj = _board_corners()
    home = T([np.pi, 0, 0], [0.45, 0.0, 0.35])
    Tg = [home @ T(np.radians(rng.uniform(-20, 20, 3)), rng.uniform(-0.04, 0.04, 3)) for _ in range(20)]
    if mode == "eye_to_hand":  # camera 1 m in front of the gripper, looking back at it
        Y = T([0, np.pi, 0], [-0.08, -0.06, 0.05])  # board on the gripper
        X = home @ Y @ T([0, 0, 0], [0.08, 0.06, -1.0])
    else:
        X = X_GRIPPER_CAM
        Y = home @ inv(X) @ T([0, 0, 0], [-0.08, -0.06, 0.45])  # board 45 cm in front of the camera
    truth_X = X
    Tc, corners = [], []
    for g in Tg:
        Tcb = inv(X) @ (g if mode == "eye_to_hand" else inv(g)) @ Y
        pc = obj @ Tcb[:3, :3].T + Tcb[:3, 3]
        assert np.all(pc[:, 2] > 0.2)
        uv = pc @ K.T
        img = uv[:, :2] / uv[:, 2:3] + rng.normal(0, 0.1, (len(obj), 2))
        Tcb_meas, _ = board_pose(obj.astype(np.float32), img.astype(np.float32), K)
        Tc.append(Tcb_meas)
        corners.append((obj, img))
    closed = solve_hand_eye(Tg, Tc, mode, method=cv2.CALIB_HAND_EYE_PARK)
    refined = solve_hand_eye(Tg, Tc, mode, corners=corners, K=K)
    dt_c, dr_c = transform_error(closed.T, truth_X)
    dt_r, dr_r = transform_error(refined.T, truth_X)
    print(
        f"\n{mode}: closed form {dt_c * 1e3:.2f} mm {dr_c:.3f} deg, refined {dt_r * 1e3:.2f} mm {dr_r:.3f} deg, "
        f"{refined.reprojection_rms_px:.3f} px"
    )
    assert closed.reprojection_rms_px is None
    assert refined.reprojection_rms_px == pytest.approx(0.1 * np.sqrt(2), rel=0.2)  # the injected noise (2-D)
    assert dt_r < 0.001 and dr_r < 0.05
    assert dt_r < 0.5 * dt_c  # the refinement is what gets it there
