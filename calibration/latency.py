"""Latency calibration by cross-correlating commanded, measured and observed motion (as UMI does).

The arm moves the TCP smoothly back and forth along one axis while a camera watches a ChArUco
board (on the table for a wrist camera, on the gripper for a fixed camera). Three signals result:

- commanded TCP position (waypoint stamps),
- measured TCP position (robot state stamps),
- the board position seen by the camera (frame stamps), projected on its main axis of motion.

The lag that maximizes the normalized cross-correlation gives:

- camera latency = lag of the observed signal behind the measured motion: how much later the
  camera stamps are than the true capture times (subtract it from the stamps);
- robot command latency = lag of the measured motion behind the commands.

:func:`estimate_delay` is the pure part (resampling on a 1 ms grid, correlation over a lag window,
parabolic peak refinement); it refuses signals without enough motion or correlation.
"""

from __future__ import annotations

import time

import numpy as np

from robot_stack.calibration.hand_eye import CalibrationError
from robot_stack.comm.messages import CameraFrame, RobotState


def estimate_delay(
    t_ref_ns: np.ndarray,
    x_ref: np.ndarray,
    t_obs_ns: np.ndarray,
    x_obs: np.ndarray,
    max_lag_s: float = 0.3,
    grid_s: float = 0.001,
    min_corr: float = 0.8,
) -> tuple[float, float]:
    """Delay d (s) such that x_obs(t) ~ a * x_ref(t - d) + b, and the correlation at d.

    The sign of a is free (a camera may see the motion mirrored).

    Raises:
        CalibrationError: too little overlap or motion, or the best correlation is below ``min_corr``.
    """
    t_ref = (np.asarray(t_ref_ns, np.int64) - int(t_ref_ns[0])) / 1e9
    t_obs = (np.asarray(t_obs_ns, np.int64) - int(t_ref_ns[0])) / 1e9
    lo, hi = max(t_ref[0], t_obs[0]) + max_lag_s, min(t_ref[-1], t_obs[-1]) - max_lag_s
    if hi - lo < 4 * max_lag_s:
        raise CalibrationError(f"signals overlap for only {max(hi - lo, 0):.2f} s; record longer")
    grid = np.arange(lo, hi, grid_s)
    obs = np.interp(grid, t_obs, x_obs)
    if np.std(obs) < 1e-9 or np.std(x_ref) < 1e-9:
        raise CalibrationError("no motion in one of the signals (is the board visible, is the arm moving?)")
    obs = (obs - obs.mean()) / obs.std()
    n_lag = int(round(max_lag_s / grid_s))
    lags = np.arange(-n_lag, n_lag + 1)
    corr = np.empty(len(lags))
    for k, lag in enumerate(lags):
        ref = np.interp(grid - lag * grid_s, t_ref, x_ref)
        ref = (ref - ref.mean()) / (ref.std() + 1e-12)
        corr[k] = np.mean(ref * obs)
    a = np.abs(corr)
    k = int(np.argmax(a))
    if a[k] < min_corr:
        raise CalibrationError(f"best correlation {a[k]:.2f} < {min_corr}: motion not seen clearly")
    frac = 0.0
    if 0 < k < len(a) - 1:
        den = a[k - 1] - 2 * a[k] + a[k + 1]
        frac = 0.5 * (a[k - 1] - a[k + 1]) / den if den != 0 else 0.0
    return float((lags[k] + frac) * grid_s), float(a[k])


def main_axis(points: np.ndarray) -> np.ndarray:
    """Project (N, 3) positions on their principal direction of motion -> (N,)."""
    c = points - points.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return c @ vt[0]


def measure(
    cfg,
    run_dir,
    camera_node: str,
    board,
    center: np.ndarray | None = None,
    axis: int = 1,
    amplitude_m: float = 0.04,
    freq_hz: float = 0.5,
    cycles: int = 4,
    arm: str = "arm",
    moving: str = "camera",
    T_gripper_camera: np.ndarray | None = None,
    log=print,
) -> dict[str, float]:
    """Run the motion on a live stack and estimate camera and robot command latencies (s).

    ``moving`` says what the arm moves: "camera" (wrist camera, board fixed) -> the observed signal
    is the camera position in the board frame; "board" (board on the gripper, camera fixed) -> the
    board position in the camera frame. Either way it is a position of the moving part, so small
    rotations of the hand (joint tracking lag) do not leak into the signal as a phase shift.
    With ``T_gripper_camera`` (eye-in-hand result) the reference is the camera position computed
    from the measured joints, the same physical point the camera observes; without it, the TCP
    position, and hand rotations times the TCP-camera lever arm bias the estimate by a few ms.

    Raises:
        CalibrationError: board not seen in enough frames, too little motion or correlation.
    """
    from robot_stack.runtime.arm_client import ArmClient
    from robot_stack.control.paths import straight_line
    from robot_stack.calibration.board import BoardNotVisible, board_pose, detect
    from robot_stack.calibration.procedure import camera_id_of
    from robot_stack.runtime.clock import now_ns
    from robot_stack.comm.transport import Subscriber

    cam_id = camera_id_of(cfg, camera_node)
    sub = Subscriber(
        [cfg.pub_endpoint(arm, run_dir), cfg.pub_endpoint(camera_node, run_dir)],
        (RobotState.TOPIC, CameraFrame.topic(cam_id)),
        history=10,
        queue_size=20_000,
        name="latency",
    )
    client = ArmClient(cfg, run_dir, arm=arm, source="latency_calibration")
    try:
        st = sub.wait_for(RobotState.TOPIC, 10)
        if st is None or sub.wait_for(CameraFrame.topic(cam_id), 20) is None:
            raise CalibrationError("no robot state or camera frames: is the stack running?")
        p0 = np.array(st.ee_pose)
        if center is not None:
            stamps, wps = straight_line(p0, np.array([*center, *p0[3:]]), now_ns(), speed=0.1)
            client.send_schedule(stamps, wps, space="ee")
            time.sleep((stamps[-1] - now_ns()) / 1e9 + 0.5)
            p0 = np.array(sub.latest(RobotState.TOPIC).ee_pose)
        t0 = now_ns() + 200_000_000
        dur = cycles / freq_hz
        ts = np.arange(0.02, dur + 1e-9, 0.02)
        cmd = np.repeat(p0[None], len(ts), 0)
        cmd[:, axis] += amplitude_m * (1 - np.cos(2 * np.pi * freq_hz * ts))  # starts and ends at rest
        stamps = t0 + (ts * 1e9).astype(np.int64)
        while sub.get(0.0) is not None:  # drop what was queued before the motion
            pass
        client.send_schedule(stamps, cmd, space="ee")
        time.sleep((stamps[-1] - now_ns()) / 1e9 + 0.5)
        frames, states = [], []
        while (item := sub.get(0.0)) is not None:
            (frames if item[0].startswith(CameraFrame.TOPIC) else states).append(item[1])
        beat_gap_s = client.max_beat_gap_s
    finally:
        client.close()
        sub.close()
    t_state = np.array([m.stamp_ns for m in states], np.int64)
    x_state = np.array([m.ee_pose[axis] for m in states])
    moved = float(np.ptp(x_state)) if len(x_state) else 0.0
    off_end = float(abs(x_state[-1] - cmd[-1, axis])) if len(x_state) else float("inf")
    if moved < 0.8 * 2 * amplitude_m or off_end > 0.25 * amplitude_m:
        raise CalibrationError(
            f"the arm did not follow the calibration motion (moved {moved * 1e3:.0f} of {2e3 * amplitude_m:.0f} "
            f"mm, ended {off_end * 1e3:.0f} mm from its end; longest heartbeat gap {beat_gap_s * 1e3:.0f} ms): "
            "did the arm hold (its log says why)?"
        )
    if T_gripper_camera is not None and moving == "camera":
        from robot_stack.calibration.hand_eye import pose_to_T

        x_ref = main_axis(np.array([(pose_to_T(np.asarray(m.ee_pose)) @ T_gripper_camera)[:3, 3] for m in states]))
    else:
        x_ref = x_state
    t_cam, pos = [], []
    for f in frames:
        try:
            obj, img = detect(f.color, board)
            T, _ = board_pose(obj, img, np.asarray(f.K))
        except BoardNotVisible:
            continue
        t_cam.append(f.stamp_ns)
        pos.append(-T[:3, :3].T @ T[:3, 3] if moving == "camera" else T[:3, 3])
    if len(pos) < 20:
        raise CalibrationError(f"the board was detected in only {len(pos)} of {len(frames)} frames")
    cam_delay, cam_corr = estimate_delay(t_state, x_ref, np.array(t_cam), main_axis(np.array(pos)))
    cmd_delay, cmd_corr = estimate_delay(stamps, cmd[:, axis], t_state, x_state)
    log(
        f"camera {cam_id}: latency {cam_delay * 1e3:.1f} ms (correlation {cam_corr:.3f}, {len(pos)} frames); "
        f"robot command-to-motion latency {cmd_delay * 1e3:.1f} ms (correlation {cmd_corr:.3f})"
    )
    return {"camera_latency_s": cam_delay, "command_latency_s": cmd_delay, "camera_frames": float(len(pos))}
