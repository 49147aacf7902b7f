"""Observation assembly: aligning camera frames and robot state on capture time.

For one control step the controller builds an observation window of To steps:

1. every camera's frame stamps are corrected by that stream's latency offset (from latency
   calibration: ``t_capture = stamp - offset``);
2. the anchor ``t_obs`` is the newest time every camera has reached (the minimum over cameras of
   their newest corrected stamp), so no camera is asked for a frame it does not have yet;
3. the window times are ``t_obs - (To - 1 - k) * dt``, k = 0..To-1; each camera contributes its
   frame nearest to each time (within ``tolerance``);
4. robot state is interpolated at the window times: joints and TCP position linearly, TCP rotation
   by slerp (scipy), gripper linearly.

A stream that is missing, older than ``max_age`` or has no frame near a window time raises
:class:`StaleStreamError` naming the stream: the controller holds; it never silently reuses an old
sample.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp
from robot_stack.comm.messages import CameraFrame, RobotState


class StaleStreamError(RobotStackError, RuntimeError):
    """A stream is missing or too old to build the observation; ``stream`` names it."""

    def __init__(self, stream: str, reason: str):
        super().__init__(f"{stream}: {reason}")
        self.stream = stream


@dataclass
class Observation:
    """An aligned observation window.

    Attributes:
        t_obs_ns: anchor (newest window time), ns.
        times_ns: (To,) window times, oldest first.
        color: camera id -> (To, H, W, 3) uint8.
        depth: camera id -> (To, H, W) uint16 (cameras with depth only).
        frame_stamps_ns: camera id -> (To,) corrected capture stamps of the chosen frames.
        q: (To, n) joint positions, rad; ee_pose: (To, 7) TCP poses in the base frame;
        gripper_width: (To,) m.
        camera_skew_ns: spread (newest - oldest) of the cameras' chosen stamps at a window time,
            the largest over the window's times, ns (0 with one camera or none).
        state_skew_ns: how far the robot state was extrapolated to reach the anchor (0 when
            states on both sides of it were interpolated), ns.
    """

    t_obs_ns: int
    times_ns: np.ndarray
    color: dict[str, np.ndarray]
    depth: dict[str, np.ndarray]
    frame_stamps_ns: dict[str, np.ndarray]
    q: np.ndarray
    ee_pose: np.ndarray
    gripper_width: np.ndarray
    camera_skew_ns: int = 0
    state_skew_ns: int = 0


def interpolate_states(
    stamps_ns: np.ndarray,
    q: np.ndarray,
    ee_pose: np.ndarray,
    gripper: np.ndarray,
    times_ns: np.ndarray,
    max_extrapolation_ns: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robot state at ``times_ns`` from a state history (stamps strictly increasing).

    Raises:
        StaleStreamError: a time lies outside the history by more than ``max_extrapolation_ns``.
    """
    if len(stamps_ns) == 0:
        raise StaleStreamError(RobotState.TOPIC, "no robot state received")
    if len(stamps_ns) > 1 and not np.all(np.diff(stamps_ns) > 0):  # the same measurement published twice
        keep = np.concatenate([[True], np.diff(stamps_ns) > 0])
        stamps_ns, q, ee_pose, gripper = stamps_ns[keep], q[keep], ee_pose[keep], gripper[keep]
    lo, hi = int(stamps_ns[0]), int(stamps_ns[-1])
    for t in times_ns:
        if t < lo - max_extrapolation_ns or t > hi + max_extrapolation_ns:
            raise StaleStreamError(RobotState.TOPIC, f"no state around t={t} ns (history {lo}..{hi})")
    t = np.clip(times_ns, lo, hi).astype(np.float64)
    s = stamps_ns.astype(np.float64)
    q_out = np.stack([np.interp(t, s, q[:, j]) for j in range(q.shape[1])], axis=1)
    pos = np.stack([np.interp(t, s, ee_pose[:, j]) for j in range(3)], axis=1)
    g = np.interp(t, s, gripper)
    if len(s) == 1:
        rot = np.repeat(ee_pose[:1, 3:], len(t), axis=0)
    else:
        rot = Slerp(s, Rotation.from_quat(ee_pose[:, 3:]))(t).as_quat()
    return q_out, np.concatenate([pos, rot], axis=1), g


def assemble(
    frames: dict[str, list],
    states: list,
    obs_horizon: int,
    dt_ns: int,
    now_ns: int,
    max_age_ns: int,
    latency_offsets_ns: dict[str, int] | None = None,
    tolerance_ns: int | None = None,
) -> Observation:
    """Build an :class:`Observation` from recent samples.

    Args:
        frames: camera id -> recent CameraFrame messages, oldest first.
        states: recent RobotState messages, oldest first.
        obs_horizon: To.
        dt_ns: control period (spacing of the window), ns.
        now_ns: current time, ns.
        max_age_ns: the anchor may be at most this old.
        latency_offsets_ns: camera id (or RobotState.TOPIC) -> latency subtracted from its stamps.
        tolerance_ns: max distance between a window time and the frame used (default dt/2).

    Raises:
        StaleStreamError: missing camera, stale anchor, or no frame near a window time.
    """
    offs = latency_offsets_ns or {}
    tol = dt_ns // 2 if tolerance_ns is None else tolerance_ns
    if not frames:  # proprioception only: the newest robot state is the anchor
        if not states:
            raise StaleStreamError(RobotState.TOPIC, "no robot state received")
        t_obs = int(states[-1].stamp_ns - offs.get(RobotState.TOPIC, 0))
        if now_ns - t_obs > max_age_ns:
            raise StaleStreamError(RobotState.TOPIC, f"newest state is {(now_ns - t_obs) / 1e6:.0f} ms old")
        times = t_obs - (np.arange(obs_horizon)[::-1].astype(np.int64)) * dt_ns
        st = np.array([m.stamp_ns for m in states], np.int64) - offs.get(RobotState.TOPIC, 0)
        q, ee, g = interpolate_states(
            st,
            np.array([m.q for m in states]),
            np.array([m.ee_pose for m in states]),
            np.array([m.gripper_width for m in states]),
            times,
            max_extrapolation_ns=tol,
        )
        return Observation(t_obs, times, {}, {}, {}, q, ee, g, 0, _extrapolated(st, t_obs))
    stamps = {}
    for cam, fs in frames.items():
        if not fs:
            raise StaleStreamError(CameraFrame.topic(cam), "no frame received")
        stamps[cam] = np.array([f.stamp_ns for f in fs], np.int64) - offs.get(cam, 0)
    t_obs = int(min(s[-1] for s in stamps.values()))
    if now_ns - t_obs > max_age_ns:
        oldest = min(stamps, key=lambda c: stamps[c][-1])
        raise StaleStreamError(
            CameraFrame.topic(oldest),
            f"newest frame is {(now_ns - t_obs) / 1e6:.0f} ms old (max {max_age_ns / 1e6:.0f} ms)",
        )
    times = t_obs - (np.arange(obs_horizon)[::-1].astype(np.int64)) * dt_ns
    color, depth, chosen = {}, {}, {}
    for cam, fs in frames.items():
        idx = []
        for t in times:
            j = int(np.argmin(np.abs(stamps[cam] - t)))
            if abs(int(stamps[cam][j]) - int(t)) > tol:
                raise StaleStreamError(
                    CameraFrame.topic(cam),
                    f"no frame within {tol / 1e6:.0f} ms of window time {(t - t_obs) / 1e6:.0f} ms",
                )
            idx.append(j)
        color[cam] = np.stack([fs[j].color for j in idx])
        if fs[idx[0]].depth is not None:
            depth[cam] = np.stack([fs[j].depth for j in idx])
        chosen[cam] = stamps[cam][idx]
    st = np.array([m.stamp_ns for m in states], np.int64) - offs.get(RobotState.TOPIC, 0)
    q, ee, g = interpolate_states(
        st,
        np.array([m.q for m in states]) if states else np.zeros((0, 0)),
        np.array([m.ee_pose for m in states]) if states else np.zeros((0, 7)),
        np.array([m.gripper_width for m in states]) if states else np.zeros(0),
        times,
        max_extrapolation_ns=tol,
    )
    per_time = np.stack(list(chosen.values()))  # (cameras, To)
    spread = int((per_time.max(0) - per_time.min(0)).max())
    return Observation(t_obs, times, color, depth, chosen, q, ee, g, spread, _extrapolated(st, t_obs))


def _extrapolated(stamps_ns: np.ndarray, t_ns: int) -> int:
    """How far ``t_ns`` lies outside the span of ``stamps_ns`` (0 inside it), ns."""
    if len(stamps_ns) == 0:
        return 0
    return int(max(0, int(stamps_ns[0]) - t_ns, t_ns - int(stamps_ns[-1])))


def resize_images(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize (To, h, w[, c]) images to ``size`` (h, w) with OpenCV INTER_AREA (None: unchanged)."""
    if size is None or images.shape[1:3] == tuple(size):
        return images
    import cv2

    return np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in images])
