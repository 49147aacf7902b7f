"""Timed waypoint trajectories for the servo loop.

A :class:`Trajectory` holds waypoints ``(t_ns, x)`` and is evaluated at servo rate. Joint
trajectories interpolate each joint linearly; pose trajectories interpolate position linearly and
rotation by slerp (``scipy.spatial.transform``). Before the first waypoint and after the last one
the trajectory holds its end value, so running out of waypoints means holding.

:meth:`Trajectory.merge` takes a new schedule the way Diffusion Policy's real-world
``PoseTrajectoryInterpolator`` does: it trims the current trajectory at "now" (inserting the
current interpolated point), keeps old waypoints only up to the first new one, drops new waypoints
already in the past and appends the rest; a new action chunk therefore replaces the tail of the old
one without a jump. Velocity and acceleration limits are met by stretching segment durations (later
waypoints shift later), never by cutting corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

NS = 1e9


@dataclass(frozen=True)
class Limits:
    """Motion limits used to stretch segments.

    For joint trajectories ``vel``/``acc`` are per joint (rad/s, rad/s^2; shape (n,) or scalar).
    For pose trajectories ``vel`` = (linear m/s, angular rad/s) and ``acc`` = linear m/s^2 (or None).
    """

    vel: np.ndarray | float | tuple[float, float]
    acc: np.ndarray | float | None = None


def _rot(q: np.ndarray) -> Rotation:
    return Rotation.from_quat(q)  # scalar-last [qx qy qz qw]


class Trajectory:
    """Piecewise trajectory of joint vectors (``kind="joint"``) or poses (``kind="pose"``).

    Args:
        kind: "joint" or "pose".
        t0_ns: time of the initial point, ns (stack clock).
        x0: initial point: (n,) joint positions (rad) or (7,) pose [x y z qx qy qz qw] (m).
    """

    def __init__(self, kind: str, t0_ns: int, x0: np.ndarray):
        if kind not in ("joint", "pose"):
            raise ValueError(f"kind must be 'joint' or 'pose', got {kind!r}")
        self.kind = kind
        self.t = np.array([int(t0_ns)], dtype=np.int64)
        self.x = np.asarray(x0, dtype=np.float64)[None].copy()
        self._rel = np.zeros((0, 3))  # pose: per-segment relative rotation vectors (slerp cache)
        if kind == "pose":
            self.x[0, 3:] = _normalize_quat(self.x[0, 3:])

    @property
    def start_ns(self) -> int:
        return int(self.t[0])

    @property
    def end_ns(self) -> int:
        return int(self.t[-1])

    def __len__(self) -> int:
        return len(self.t)

    def eval(self, t_ns: int) -> np.ndarray:
        """Point at ``t_ns`` (held constant outside the waypoint span)."""
        t = self.t
        if t_ns <= t[0]:
            return self.x[0].copy()
        if t_ns >= t[-1]:
            return self.x[-1].copy()
        i = int(np.searchsorted(t, t_ns, side="right"))  # t[i-1] <= t_ns < t[i]
        s = (t_ns - t[i - 1]) / (t[i] - t[i - 1])
        if self.kind == "pose":
            a, b = self.x[i - 1], self.x[i]
            out = np.empty(7)
            out[:3] = a[:3] + s * (b[:3] - a[:3])
            out[3:] = (_rot(a[3:]) * Rotation.from_rotvec(s * self._rel[i - 1])).as_quat()
            return out
        return self._interp(self.x[i - 1], self.x[i], s)

    def velocity(self, t_ns: int) -> np.ndarray:
        """Segment velocity at ``t_ns`` (zeros outside the span); joint: rad/s; pose: (3,) m/s."""
        t = self.t
        n = self.x.shape[1] if self.kind == "joint" else 3
        if t_ns < t[0] or t_ns >= t[-1] or len(t) < 2:
            return np.zeros(n)
        i = int(np.searchsorted(t, t_ns, side="right"))
        dt = (t[i] - t[i - 1]) / NS
        return (self.x[i, :n] - self.x[i - 1, :n]) / dt

    def _interp(self, a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
        if self.kind == "joint":
            return a + s * (b - a)
        out = np.empty(7)
        out[:3] = a[:3] + s * (b[:3] - a[:3])
        ra, rb = _rot(a[3:]), _rot(b[3:])
        out[3:] = (ra * Rotation.from_rotvec(s * (ra.inv() * rb).as_rotvec())).as_quat()
        return out

    def _min_duration(self, a: np.ndarray, b: np.ndarray, lim: Limits) -> float:
        if self.kind == "joint":
            return float(np.max(np.abs(b - a) / np.asarray(lim.vel, dtype=float)))
        v_lin, v_ang = lim.vel  # type: ignore[misc]
        d_lin = float(np.linalg.norm(b[:3] - a[:3]))
        d_ang = float((_rot(a[3:]).inv() * _rot(b[3:])).magnitude())
        return max(d_lin / v_lin, d_ang / v_ang)

    def _delta(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return b - a if self.kind == "joint" else b[:3] - a[:3]

    def merge(self, stamps_ns: np.ndarray, points: np.ndarray, now_ns: int, limits: Limits | None = None) -> int:
        """Merge a new schedule at ``now_ns`` (see module doc).

        Args:
            stamps_ns: (N,) strictly increasing int64 target times, ns.
            points: (N, n) joint positions or (N, 7) poses.
            now_ns: current time, ns.
            limits: motion limits; segments that violate them are stretched.

        Returns:
            Number of segments stretched to meet the limits.
        """
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
        points = np.asarray(points, dtype=np.float64)
        keep_new = stamps_ns > now_ns
        stamps_ns, points = stamps_ns[keep_new], points[keep_new]
        if len(stamps_ns) == 0:
            return 0
        v0 = self.velocity(now_ns)
        current = self.eval(now_ns)
        keep_old = merge_mask(self.t, int(stamps_ns[0]), now_ns)
        t = np.concatenate([[now_ns], self.t[keep_old], stamps_ns])
        x = np.concatenate([current[None], self.x[keep_old], points])
        if self.kind == "pose":
            x[:, 3:] = _normalize_quat(x[:, 3:])
            # take the short way round: flip quaternions to the same hemisphere as the previous one
            for i in range(1, len(x)):
                if np.dot(x[i, 3:], x[i - 1, 3:]) < 0:
                    x[i, 3:] *= -1
        stretched = 0
        if limits is not None:
            t, stretched = self._stretch(t, x, v0, limits)
        self.t, self.x = t, x
        if self.kind == "pose":  # slerp a -> b is a * exp(s * log(a^-1 b)); cache log(a^-1 b)
            r = _rot(x[:, 3:])
            self._rel = (r[:-1].inv() * r[1:]).as_rotvec()
        return stretched

    def _stretch(self, t: np.ndarray, x: np.ndarray, v0: np.ndarray, lim: Limits) -> tuple[np.ndarray, int]:
        t = t.astype(np.int64).copy()
        stretched = 0
        v_prev = v0
        for i in range(1, len(t)):
            dt = (t[i] - t[i - 1]) / NS
            need = max(dt, self._min_duration(x[i - 1], x[i], lim))
            if lim.acc is not None:
                d = self._delta(x[i - 1], x[i])
                acc = np.asarray(lim.acc, dtype=float)
                for _ in range(60):  # grow until the velocity change fits acc * duration
                    if np.all(np.abs(d / need - v_prev) <= acc * need + 1e-12):
                        break
                    need *= 1.15
            if need > dt + 1e-9:
                t[i:] += int(round((need - dt) * NS))
                stretched += 1
            v_prev = self._delta(x[i - 1], x[i]) / ((t[i] - t[i - 1]) / NS)
        return t, stretched


def merge_mask(old_stamps_ns: np.ndarray, first_new_ns: int | None, after_ns: int) -> np.ndarray:
    """The merge rule of a new schedule into an old one: which old waypoints stay.

    Old waypoints after ``after_ns`` (the arm node: "now") and before the new schedule's first
    waypoint stay; the new schedule replaces everything from its first waypoint on. The arm node's
    :meth:`Trajectory.merge` and the controller's :class:`robot_stack.control.strategies.CommittedPlan`
    both use it, so what the controller believes is committed is what the arm executes.

    Args:
        old_stamps_ns: (k,) int64 old waypoint times, ns.
        first_new_ns: time of the new schedule's first waypoint, ns (None: an empty schedule).
        after_ns: old waypoints at or before this are dropped, ns.
    Returns:
        (k,) bool mask of the old waypoints kept.
    """
    old = np.asarray(old_stamps_ns, np.int64)
    keep = old > after_ns
    if first_new_ns is not None:
        keep &= old < first_new_ns
    return keep


def _normalize_quat(q: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-9):
        raise ValueError("zero-norm quaternion")
    return q / n
