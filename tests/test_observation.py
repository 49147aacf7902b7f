"""Observation assembly: alignment by capture stamp, state interpolation, stale streams."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.comm.messages import CameraFrame, RobotState
from robot_stack.control.observation import StaleStreamError, assemble

MS = 1_000_000
DT = 100 * MS


def frame(t_ms, value, depth=True):
    return CameraFrame(
        stamp_ns=t_ms * MS,
        color=np.full((2, 2, 3), value, np.uint8),
        depth=np.full((2, 2), value, np.uint16) if depth else None,
        depth_scale=0.001 if depth else 0.0,
        K=np.eye(3),
    )


def state(t_ms, x, yaw_deg):
    q = Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()
    return RobotState(
        stamp_ns=t_ms * MS, q=np.full(7, x), dq=np.zeros(7), ee_pose=np.array([x, 0, 0, *q]), gripper_width=x / 10
    )


def cams():
    # scene at 30 Hz-ish stamps, wrist slightly behind
    return {
        "scene": [frame(t, t // 10) for t in range(700, 1001, 33)],  # 700, 733, ..., 997
        "wrist": [frame(t, t // 10 + 1, depth=False) for t in range(705, 981, 33)],  # newest 969
    }


def states():
    return [state(t, t / 1000, t / 10) for t in range(600, 1001, 2)]


def test_anchor_is_newest_common_time_and_frames_nearest():
    obs = assemble(cams(), states(), obs_horizon=2, dt_ns=DT, now_ns=1000 * MS, max_age_ns=200 * MS)
    assert obs.t_obs_ns == 969 * MS  # the wrist camera's newest frame bounds the anchor
    assert list(obs.times_ns) == [869 * MS, 969 * MS]
    assert list(obs.frame_stamps_ns["scene"]) == [865 * MS, 964 * MS]  # nearest scene frames
    assert list(obs.frame_stamps_ns["wrist"]) == [870 * MS, 969 * MS]
    assert obs.color["scene"].shape == (2, 2, 2, 3) and obs.color["scene"][1, 0, 0, 0] == 96
    assert "wrist" not in obs.depth and obs.depth["scene"].shape == (2, 2, 2)


def test_state_interpolated_with_slerp_at_window_times():
    obs = assemble(cams(), states(), obs_horizon=2, dt_ns=DT, now_ns=1000 * MS, max_age_ns=200 * MS)
    assert obs.q[:, 0] == pytest.approx([0.869, 0.969])
    assert obs.ee_pose[:, 0] == pytest.approx([0.869, 0.969])
    yaw = Rotation.from_quat(obs.ee_pose[:, 3:]).as_euler("xyz", degrees=True)[:, 2]
    assert yaw == pytest.approx([86.9, 96.9], abs=1e-6)
    assert obs.gripper_width == pytest.approx([0.0869, 0.0969])


def test_latency_offset_shifts_a_stream():
    obs = assemble(
        cams(),
        states(),
        obs_horizon=1,
        dt_ns=DT,
        now_ns=1000 * MS,
        max_age_ns=200 * MS,
        latency_offsets_ns={"wrist": 20 * MS},
    )
    assert obs.t_obs_ns == 949 * MS  # wrist frames were captured 20 ms before their stamps
    assert obs.frame_stamps_ns["wrist"][0] == 949 * MS


def test_stale_or_missing_streams_raise_with_the_stream_name():
    c = cams()
    with pytest.raises(StaleStreamError, match="camera/wrist: newest frame is 231 ms old"):
        assemble(c, states(), 1, DT, now_ns=1200 * MS, max_age_ns=200 * MS)
    c["wrist"] = []
    with pytest.raises(StaleStreamError, match="camera/wrist: no frame received"):
        assemble(c, states(), 1, DT, now_ns=1000 * MS, max_age_ns=200 * MS)
    gap = cams()
    gap["scene"] = [f for f in gap["scene"] if not 800 * MS < f.stamp_ns < 940 * MS]
    with pytest.raises(StaleStreamError, match="camera/scene: no frame within 50 ms"):
        assemble(gap, states(), 2, DT, now_ns=1000 * MS, max_age_ns=200 * MS)
    with pytest.raises(StaleStreamError, match="robot/state: no state around"):
        assemble(cams(), [s for s in states() if s.stamp_ns < 800 * MS], 1, DT, now_ns=1000 * MS, max_age_ns=200 * MS)
