"""Client side of the arm node's lossless input: schedules, heartbeats, e-stop.

Anything that sends waypoints (controller, CLI, tests) must keep heartbeating while its schedule
runs, or the arm node holds after ``heartbeat_timeout_s``. A node sends that heartbeat from its
own control loop (``heartbeat_hz=0`` and :meth:`ArmClient.heartbeat` every step), so a hung loop
reads as silent; one-shot tools (CLI ``move``, calibration) let :class:`ArmClient` run it on a
thread (the socket is shared under a lock).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robot_stack.runtime.clock import now_ns
from robot_stack.comm.messages import ArmControl, Heartbeat, WaypointSchedule
from robot_stack.comm.transport import Sender

if TYPE_CHECKING:
    from robot_stack.comm.security import CurveClient
    from robot_stack.runtime.config import StackConfig


class ArmClient:
    """Sends to one arm node.

    Args:
        config: the stack's config; run_dir: its run folder.
        arm: arm node name.
        source: this sender's name (the arm node tracks its heartbeat).
        heartbeat_hz: heartbeat rate (0 = none: the caller calls :meth:`heartbeat` itself).
        timeout_s: send timeout, s.
        curve: CURVE client settings (required when the arm's input is TCP that leaves the host).
        tx: an open sender to the arm's input to use instead of a new socket (the fake context's
            in-memory sender, ``robot_stack.testing``); ``config``/``run_dir`` are then unused.
    """

    def __init__(
        self,
        config: StackConfig | None,
        run_dir: Path | None,
        arm: str = "arm",
        source: str = "client",
        heartbeat_hz: float = 20.0,
        timeout_s: float = 2.0,
        curve: CurveClient | None = None,
        tx: Sender | None = None,
    ):
        self.source = source
        self.arm = arm
        self._tx = (
            tx if tx is not None else Sender(config.in_endpoint(arm, run_dir), source, timeout_s=timeout_s, curve=curve)
        )
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

    #: niceness the heartbeat thread asks for (Linux, per thread; granted to root or with
    #: CAP_SYS_NICE, else it keeps the process's): a starved heartbeat makes the arm hold, and
    #: beside a CPU hog per core this thread once went 1.8 s without running at the default
    BEAT_NICE = -10

    def _beat(self, period: float) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.BEAT_NICE)
        except (OSError, AttributeError):  # not permitted (or not Linux): the default priority
            pass
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

    def send_schedule(
        self,
        stamps_ns: np.ndarray,
        positions: np.ndarray,
        space: str = "joint",
        gripper: np.ndarray | None = None,
        origin: str = "",
    ) -> None:
        """Send a waypoint schedule (see :class:`~robot_stack.comm.messages.WaypointSchedule`)."""
        self._send(
            WaypointSchedule.TOPIC,
            WaypointSchedule(
                stamp_ns=now_ns(),  # the send time: the arm node measures send -> merge from it
                stamps_ns=np.asarray(stamps_ns, np.int64),
                positions=np.asarray(positions, np.float64),
                space=space,
                gripper=None if gripper is None else np.asarray(gripper, np.float64),
                origin=origin or self.source,
            ),
        )

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
