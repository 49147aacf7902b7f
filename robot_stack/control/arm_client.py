"""Client side of the arm node's lossless input: schedules, heartbeats, e-stop.

Anything that sends waypoints (controller, CLI, tests) must keep heartbeating while its schedule
runs, or the arm node holds after ``heartbeat_timeout_s``. A node sends that heartbeat from its
own control loop (``heartbeat_hz=0`` and :meth:`ArmClient.heartbeat` every step), so a hung loop
reads as silent; one-shot tools (CLI ``move``, calibration) let :class:`ArmClient` run it on a
thread (the socket is shared under a lock).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.config import StackConfig
from robot_stack.comm.messages import ArmControl, Heartbeat, WaypointSchedule
from robot_stack.comm.transport import Sender


class ArmClient:
    """Sends to one arm node.

    Args:
        config: the stack's config; run_dir: its run folder.
        arm: arm node name.
        source: this sender's name (the arm node tracks its heartbeat).
        heartbeat_hz: heartbeat rate (0 = none: the caller calls :meth:`heartbeat` itself).
        timeout_s: send timeout, s.
        curve: CURVE client settings (required when the arm's input is TCP that leaves the host).
    """

    def __init__(self, config: StackConfig, run_dir: Path, arm: str = "arm", source: str = "client",
                 heartbeat_hz: float = 20.0, timeout_s: float = 2.0, curve=None):
        self.source = source
        self._tx = Sender(config.in_endpoint(arm, run_dir), source, timeout_s=timeout_s, curve=curve)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        #: longest gap between two heartbeats of the thread, s (a starved process shows here)
        self.max_beat_gap_s = 0.0
        if heartbeat_hz > 0:
            try:  # at once: the arm counts only heartbeats as signs of life, and may remember this
                self.heartbeat()  # source name as silent from an earlier client
            except Exception:
                pass
            self._thread = threading.Thread(target=self._beat, args=(1.0 / heartbeat_hz,), daemon=True)
            self._thread.start()

    def _send(self, topic: str, msg) -> None:
        with self._lock:
            self._tx.send(topic, msg)

    def _beat(self, period: float) -> None:
        last = time.monotonic()
        while not self._stop.wait(period):
            now = time.monotonic()
            self.max_beat_gap_s = max(self.max_beat_gap_s, now - last)  # this thread's own scheduling delays
            last = now
            try:
                self.heartbeat()
            except Exception:  # the arm node is gone: nothing to keep alive
                pass

    def heartbeat(self) -> None:
        """Tell the arm node this sender is alive."""
        self._send("heartbeat", Heartbeat(node=self.source))

    def send_schedule(self, stamps_ns: np.ndarray, positions: np.ndarray, space: str = "joint",
                      gripper: np.ndarray | None = None, origin: str = "") -> None:
        """Send a waypoint schedule (see :class:`~robot_stack.comm.messages.WaypointSchedule`)."""
        self._send(WaypointSchedule.TOPIC, WaypointSchedule(
            stamp_ns=now_ns(),  # the send time: the arm node measures send -> merge from it
            stamps_ns=np.asarray(stamps_ns, np.int64), positions=np.asarray(positions, np.float64),
            space=space, gripper=None if gripper is None else np.asarray(gripper, np.float64),
            origin=origin or self.source))

    def estop(self, reason: str = "") -> None:
        self._send(ArmControl.TOPIC, ArmControl(kind="estop", reason=reason))

    def release(self) -> None:
        self._send(ArmControl.TOPIC, ArmControl(kind="release"))

    def recover(self) -> None:
        """Ask the arm's driver to recover from a robot fault (sources as for ``release``)."""
        self._send(ArmControl.TOPIC, ArmControl(kind="recover"))

    def hold(self) -> None:
        self._send(ArmControl.TOPIC, ArmControl(kind="hold"))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        self._tx.close()


def straight_line(start: np.ndarray, end: np.ndarray, t0_ns: int, speed: float, step_s: float = 0.05,
                  ang_speed: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Timed TCP waypoints along the segment start -> end (positions linear, orientation slerped, so
    no waypoint jumps in rotation; the duration covers both ``speed`` and ``ang_speed``).

    Args:
        start, end: (7,) poses [x y z qx qy qz qw] in the base frame.
        t0_ns: time of ``start``, ns.
        speed: TCP speed, m/s (> 0).
        step_s: waypoint spacing, s.
        ang_speed: TCP rotation speed, rad/s (> 0).
    Returns:
        stamps_ns (N,) int64 and poses (N, 7), the first waypoint one step after ``t0_ns``.
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


def polyline_schedule(start: np.ndarray, points: list[np.ndarray], t0_ns: int, speed: float,
                      step_s: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
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


def polyline(client: "ArmClient", start: np.ndarray, points: list[np.ndarray], t0_ns: int, speed: float,
             step_s: float = 0.02) -> int:
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
