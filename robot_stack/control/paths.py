"""Timed TCP paths: straight lines, polylines and squares as waypoint schedules (pure functions).

Each returns stamps (N,) int64 ns on the stack's clock and poses (N, 7) [x y z qx qy qz qw] in the
arm's base frame; :func:`polyline` sends its legs through anything with ``send_schedule`` (an
:class:`~robot_stack.runtime.arm_client.ArmClient`).
"""

from __future__ import annotations

import numpy as np


def straight_line(
    start: np.ndarray, end: np.ndarray, t0_ns: int, speed: float, step_s: float = 0.05, ang_speed: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Timed TCP waypoints along the segment start -> end (positions linear, orientation slerped, so
    no waypoint jumps in rotation; the duration covers both ``speed`` and ``ang_speed``).

    Args:
        start: (7,) pose [x y z qx qy qz qw] in the base frame (m), where the line starts.
        end: (7,) pose in the base frame, where it ends.
        t0_ns: time of ``start``, ns.
        speed: TCP speed, m/s (> 0).
        step_s: waypoint spacing, s.
        ang_speed: TCP rotation speed, rad/s (> 0).

    Returns:
        stamps_ns (N,) int64 and poses (N, 7), the first waypoint one step after ``t0_ns``.

    Raises:
        ValueError: ``speed`` is not positive.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    from scipy.spatial.transform import Rotation, Slerp

    start, end = np.asarray(start, float), np.asarray(end, float)
    dist = float(np.linalg.norm(end[:3] - start[:3]))
    rots = Rotation.from_quat(np.stack([start[3:], end[3:]]))
    angle = float((rots[0].inv() * rots[1]).magnitude())
    n = max(1, int(np.ceil(max(dist / speed, angle / ang_speed) / step_s)))
    s = np.arange(1, n + 1) / n
    poses = np.empty((n, 7))
    poses[:, :3] = start[:3] + s[:, None] * (end[:3] - start[:3])
    poses[:, 3:] = Slerp([0.0, 1.0], rots)(s).as_quat()
    stamps = t0_ns + (np.arange(1, n + 1) * step_s * 1e9).astype(np.int64)
    return stamps, poses


def polyline_schedule(
    start: np.ndarray, points: list[np.ndarray], t0_ns: int, speed: float, step_s: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """One Cartesian schedule start -> points[0] -> points[1] ... at ``speed`` m/s, the orientation
    of ``start`` (7,) held; ``points``: (3,) positions in the base frame, m.

    Returns:
        stamps_ns (N,) int64 from one step after ``t0_ns``, and poses (N, 7).
    """
    pose, t = np.asarray(start, float), int(t0_ns)
    stamps, poses = [], []
    for p in points:
        goal = pose.copy()
        goal[:3] = p
        st, ps = straight_line(pose, goal, t, speed=speed, step_s=step_s)
        stamps.append(st)
        poses.append(ps)
        pose, t = goal, int(st[-1])
    return np.concatenate(stamps), np.concatenate(poses)


def polyline(
    client, start: np.ndarray, points: list[np.ndarray], t0_ns: int, speed: float, step_s: float = 0.02
) -> int:
    """Send one Cartesian schedule per leg start -> points[0] -> points[1] ... (orientation of ``start``).

    Legs are queued back to back (each leg's schedule starts where the previous one ends).

    Returns:
        the planned end time of the last leg, ns.
    """
    pose, t = np.asarray(start, float), int(t0_ns)
    for p in points:
        goal = np.asarray(start, float).copy()
        goal[:3] = p
        stamps, poses = straight_line(pose, goal, t, speed=speed, step_s=step_s)
        client.send_schedule(stamps, poses, space="ee")
        pose, t = goal, int(stamps[-1])
    return t


def square(center: np.ndarray, side: float) -> list[np.ndarray]:
    """Corners of a horizontal square (closed: the first corner repeated at the end), base frame, m."""
    h = side / 2
    c = np.asarray(center, float)
    return [c + [-h, -h, 0], c + [h, -h, 0], c + [h, h, 0], c + [-h, h, 0], c + [-h, -h, 0]]
