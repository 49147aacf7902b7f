"""Automatic hand-eye data collection on a running stack (sim or real, through the arm's safety).

The arm is driven through a pose set around a nominal TCP pose (random rotations about all three
tool axes, small translations), in straight lines at a modest speed. At each pose, once the arm
is still (its measured TCP pose stayed within 0.05 mm / 0.01 deg for 0.3 s, :mod:`stillness`), the
procedure takes the first camera frame captured after that and the robot state, detects the board
and records (T_base_gripper, T_camera_board) and the board corners. Poses the arm refuses or
where the board is not visible are skipped and reported.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from robot_stack.runtime.arm_client import ArmClient
from robot_stack.control.paths import straight_line
from robot_stack.calibration.board import BoardNotVisible, BoardSpec, board_pose, detect
from robot_stack.calibration.stillness import StillWindow
from robot_stack.calibration.hand_eye import CalibrationError, HandEyeResult, pose_to_T, solve_hand_eye
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.config import StackConfig
from robot_stack.comm.transport import Subscriber
from robot_stack.comm.messages import CameraFrame, RobotState


def pose_set(
    nominal: np.ndarray, n: int, seed: int = 0, rot_deg: float = 15.0, trans_m: float = 0.04
) -> list[np.ndarray]:
    """``n`` TCP poses around ``nominal`` (7,): rotations uniform in +-rot_deg about each tool axis,
    translations uniform in +-trans_m per axis (base frame)."""
    rng = np.random.default_rng(seed)
    r0 = Rotation.from_quat(nominal[3:])
    out = []
    for _ in range(n):
        p = nominal.copy()
        p[:3] += rng.uniform(-trans_m, trans_m, 3)
        p[3:] = (r0 * Rotation.from_rotvec(np.radians(rng.uniform(-rot_deg, rot_deg, 3)))).as_quat()
        out.append(p)
    return out


@dataclass
class Samples:
    """Collected hand-eye samples and what was skipped (pose index, reason)."""

    T_base_gripper: list[np.ndarray] = field(default_factory=list)
    T_camera_board: list[np.ndarray] = field(default_factory=list)
    reproj_px: list[float] = field(default_factory=list)
    corners: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (obj (N,3) m, img (N,2) px)
    images: list[np.ndarray] = field(default_factory=list)
    K: np.ndarray | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)


def camera_id_of(cfg: StackConfig, camera_node: str) -> str:
    nc = cfg.nodes.get(camera_node)
    if nc is None or nc.kind != "camera":
        raise CalibrationError(f"{camera_node!r} is not a camera node of this config")
    return nc.typed.camera_id


def board_of(cfg: StackConfig, key: str) -> BoardSpec:
    """The board ``key`` ("table_board" / "gripper_board") of the config's calibration section."""
    if cfg.calibration is None or getattr(cfg.calibration, key) is None:
        raise CalibrationError(f"the config needs calibration.{key} (a 'calibration:' section with the board)")
    return BoardSpec.model_validate(getattr(cfg.calibration, key))


def current_pose(cfg: StackConfig, run_dir: Path, arm: str = "arm") -> np.ndarray:
    """The arm's current TCP pose (7,) from a running stack."""
    sub = Subscriber([cfg.pub_endpoint(arm, run_dir)], (RobotState.TOPIC,), name="calibrate-pose")
    st = sub.wait_for(RobotState.TOPIC, 10)
    sub.close()
    if st is None:
        raise CalibrationError("no robot state: is the stack running?")
    return np.array(st.ee_pose)


def collect(
    cfg: StackConfig,
    run_dir: Path,
    camera_node: str,
    board: BoardSpec,
    poses: list[np.ndarray],
    arm: str = "arm",
    speed: float = 0.1,
    settle_timeout_s: float = 5.0,
    still: StillWindow | None = None,
    log=print,
) -> Samples:
    """Drive the arm through ``poses`` and collect board observations (see module doc).

    A pose where the arm is not still within ``settle_timeout_s`` after its move, or moved while
    the frame was captured, is skipped with the reason."""
    still = still or StillWindow()
    cam_id = camera_id_of(cfg, camera_node)
    sub = Subscriber(
        [cfg.pub_endpoint(arm, run_dir), cfg.pub_endpoint(camera_node, run_dir)],
        (RobotState.TOPIC, CameraFrame.topic(cam_id)),
        history=4,
        name="calibrate",
    )
    client = ArmClient(cfg, run_dir, arm=arm, source="calibrate")
    out = Samples()
    try:
        if sub.wait_for(RobotState.TOPIC, 10) is None or sub.wait_for(CameraFrame.topic(cam_id), 20) is None:
            raise CalibrationError("no robot state or camera frames: is the stack running?")
        for i, goal in enumerate(poses):
            start = np.array(sub.latest(RobotState.TOPIC).ee_pose)
            stamps, wps = straight_line(start, goal, now_ns(), speed=speed)
            client.send_schedule(stamps, wps, space="ee")
            # the arm stretches segments that rotate faster than its limits: wait for it to finish
            time.sleep(max(0.0, (stamps[-1] - now_ns()) / 1e9))
            deadline = time.monotonic() + 10.0
            while sub.latest(RobotState.TOPIC).mode == "track" and time.monotonic() < deadline:
                time.sleep(0.02)
            st = _wait_still(sub, still, settle_timeout_s)
            if st is None:
                out.skipped.append((i, f"arm not still within {settle_timeout_s:.1f} s"))
                continue
            t_settled = st.stamp_ns
            reached = np.linalg.norm(np.array(st.ee_pose[:3]) - goal[:3])
            if reached > 0.005 or st.mode == "estop":
                out.skipped.append((i, f"arm did not reach the pose ({reached * 1e3:.0f} mm off; refused by safety?)"))
                continue
            frame = sub.wait_for(CameraFrame.topic(cam_id), 3.0)
            while frame is not None and frame.stamp_ns < t_settled:
                frame = sub.wait_for(CameraFrame.topic(cam_id), 3.0, newer_than_seq=frame.seq)
            if frame is None:
                out.skipped.append((i, "no camera frame after settling"))
                continue
            after = sub.latest(RobotState.TOPIC)
            if not still.update(after.stamp_ns, np.array(after.ee_pose)):
                out.skipped.append((i, "the arm moved while the frame was captured"))
                continue
            try:
                obj, img = detect(frame.color, board)
                T_cb, rms = board_pose(obj, img, np.asarray(frame.K))
            except BoardNotVisible as e:
                out.skipped.append((i, f"board not visible: {e}"))
                continue
            out.T_base_gripper.append(pose_to_T(np.array(st.ee_pose)))
            out.T_camera_board.append(T_cb)
            out.reproj_px.append(rms)
            out.corners.append((obj, img))
            out.images.append(np.array(frame.color))
            out.K = np.array(frame.K)
            log(f"pose {i + 1}/{len(poses)}: {len(obj)} corners, reprojection {rms:.2f} px")
    finally:
        client.close()
        sub.close()
    return out


def _wait_still(sub: Subscriber, still: StillWindow, timeout_s: float) -> RobotState | None:
    """The first robot state at which ``still`` holds, or None after ``timeout_s``."""
    still.reset()
    deadline = time.monotonic() + timeout_s
    st = sub.latest(RobotState.TOPIC)
    while time.monotonic() < deadline:
        st = sub.wait_for(RobotState.TOPIC, 0.5, newer_than_seq=st.seq)
        if st is None:
            return None
        if still.update(st.stamp_ns, np.array(st.ee_pose)):
            return st
    return None


def hand_eye(
    cfg: StackConfig,
    run_dir: Path,
    camera_node: str,
    mode: str,
    n_poses: int = 15,
    seed: int = 0,
    center: np.ndarray | None = None,
    rot_deg: float = 15.0,
    arm: str = "arm",
    write: bool = True,
    log=print,
) -> HandEyeResult:
    """Collect, solve, report and (``write``) store a hand-eye calibration.

    Raises:
        CalibrationError: missing board config, too few usable poses, degenerate motion.
    """
    board = board_of(cfg, "table_board" if mode == "eye_in_hand" else "gripper_board")
    start_pose = current_pose(cfg, run_dir, arm)
    nominal = start_pose.copy()
    if center is not None:
        nominal[:3] = center
    samples = collect(cfg, run_dir, camera_node, board, pose_set(nominal, n_poses, seed, rot_deg), arm=arm, log=log)
    for i, why in samples.skipped:
        log(f"pose {i + 1} skipped: {why}")
    # return to where we started
    client = ArmClient(cfg, run_dir, arm=arm, source="calibrate")
    try:
        sub = Subscriber([cfg.pub_endpoint(arm, run_dir)], (RobotState.TOPIC,), name="calibrate-end")
        cur = sub.wait_for(RobotState.TOPIC, 5)
        if cur is not None:
            stamps, wps = straight_line(np.array(cur.ee_pose), start_pose, now_ns(), speed=0.1)
            client.send_schedule(stamps, wps, space="ee")
            time.sleep(max(0.0, (stamps[-1] - now_ns()) / 1e9) + 0.3)
        sub.close()
    finally:
        client.close()
    res = solve_hand_eye(samples.T_base_gripper, samples.T_camera_board, mode, corners=samples.corners, K=samples.K)
    log(
        f"{mode}: {res.n_poses} poses, residual rms {res.residual_rms_mm:.2f} mm / {res.residual_rms_deg:.3f} deg "
        f"(max {res.residual_max_mm:.2f} mm / {res.residual_max_deg:.3f} deg), corners reprojected "
        f"{res.reprojection_rms_px:.2f} px rms"
    )
    if write:
        from robot_stack.calibration import store

        cam_id = camera_id_of(cfg, camera_node)
        name = "T_gripper_camera" if mode == "eye_in_hand" else "T_base_camera"
        store.update(
            cfg.calibration.file,
            "cameras",
            cam_id,
            {
                name: np.round(res.T, 6).tolist(),
                "hand_eye": {
                    "mode": mode,
                    "n_poses": res.n_poses,
                    "residual_rms_mm": round(res.residual_rms_mm, 3),
                    "residual_rms_deg": round(res.residual_rms_deg, 4),
                    "reprojection_rms_px": round(res.reprojection_rms_px, 3),
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                },
            },
        )
        log(f"written to {cfg.calibration.file} (cameras.{cam_id}.{name})")
    return res


def intrinsics(
    cfg: StackConfig,
    run_dir: Path,
    camera_node: str,
    board_key: str = "table_board",
    n_poses: int = 12,
    seed: int = 0,
    center: np.ndarray | None = None,
    rot_deg: float = 15.0,
    arm: str = "arm",
    write: bool = True,
    log=print,
):
    """Collect board views and check the camera's reported intrinsics against a calibration from them.

    Returns:
        (IntrinsicsCheck, calibrated K, distortion).
    """
    from robot_stack.calibration import store
    from robot_stack.calibration.intrinsics import calibrate_intrinsics, verify_intrinsics

    board = board_of(cfg, board_key)
    nominal = current_pose(cfg, run_dir, arm)
    if center is not None:
        nominal[:3] = center
    s = collect(cfg, run_dir, camera_node, board, pose_set(nominal, n_poses, seed, rot_deg), arm=arm, log=log)
    for i, why in s.skipped:
        log(f"pose {i + 1}/{n_poses}: skipped: {why}")
    if s.K is None:
        raise CalibrationError("the board was not seen in any pose")
    check = verify_intrinsics(s.images, s.K, None, board)
    K, dist, rms = calibrate_intrinsics(s.images, board)
    log(
        f"reported K: reprojection {check.rms_px:.3f} px, focal {check.focal_error * 100:.2f} % and principal "
        f"point {check.principal_point_error_px:.1f} px from the calibration ({'OK' if check.ok else 'MISMATCH'}); "
        f"calibrated fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} cx {K[0, 2]:.1f} cy {K[1, 2]:.1f}, rms {rms:.3f} px"
    )
    if write:
        store.update(
            cfg.calibration.file,
            "cameras",
            camera_id_of(cfg, camera_node),
            {
                "intrinsics_check": {
                    "reported_K": np.round(s.K, 4).tolist(),
                    "rms_px": round(check.rms_px, 4),
                    "focal_error": round(check.focal_error, 5),
                    "ok": bool(check.ok),
                },
                "K_calibrated": np.round(K, 4).tolist(),
                "distortion_calibrated": np.round(dist, 6).tolist(),
            },
        )
    return check, K, dist
