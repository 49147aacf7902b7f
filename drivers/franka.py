"""Franka (FR3 / Panda) arm driver on ``pylibfranka`` (official Python bindings of libfranka).

A 1 kHz thread owns the libfranka control loop (``start_joint_position_control`` with the
robot's internal joint impedance controller): each cycle it reads the robot state
(``readOnce``, which paces the loop at the robot's 1 kHz) and writes the next joint position.
The arm node's servo-rate targets (500 Hz, already interpolated and safety-checked) pass through
a jerk-limited second-order tracker before they reach libfranka, because the FCI rejects
commands whose velocity or acceleration jump between cycles ("motion generator ... discontinuity"
reflexes) and the arm node's piecewise-linear interpolation has velocity steps at waypoints.
The tracker's limits stay below the FR3 datasheet limits (velocity 2.0 rad/s, acceleration
8 rad/s^2, jerk 2000 rad/s^3 against 2.62 / 10 / 5000).

Errors: a ``ControlException`` (a reflex, a communication-constraint violation) ends the control
loop; :meth:`read` then raises :class:`ArmDriverError` naming libfranka's reason, and the arm
node holds. ``automatic_error_recovery`` (on request, or by ``recover()``) clears reflexes and
restarts control from the measured state. Gripper: ``franka::Gripper`` on its own thread
(homing at start, ``move`` when the commanded opening changes). Sources: libfranka documentation
(``franka::Robot``, ``franka::ActiveControl``, ``franka::Gripper``), FR3 datasheet limits.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from robot_stack.clock import now_ns

from .arm import ArmDriver, ArmDriverError, JointReading

log = logging.getLogger(__name__)

MAX_WIDTH = 0.08  # Franka Hand opening, m
# joint position limits, rad (FR3 and Panda datasheets)
LIMITS = {
    "fr3": (np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159]),
            np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])),
    "panda": (np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]),
              np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])),
}


class JerkLimitedTracker:
    """Critically damped tracking of a position target with velocity, acceleration and jerk limits.

    Each :meth:`step` of ``dt`` s moves the command toward the target: desired acceleration from a
    PD law (natural frequency ``wn`` rad/s, damping 1), then the change of acceleration is clipped
    to ``jerk * dt``, acceleration to ``acc`` and velocity to ``vel``. Units rad, s.
    """

    def __init__(self, q0: np.ndarray, wn: float = 40.0, vel: float = 2.0, acc: float = 8.0, jerk: float = 2000.0):
        self.q = np.asarray(q0, float).copy()
        self.dq = np.zeros_like(self.q)
        self.ddq = np.zeros_like(self.q)
        self.wn, self.vel, self.acc, self.jerk = wn, vel, acc, jerk

    def step(self, target: np.ndarray, dt: float) -> np.ndarray:
        a_des = self.wn ** 2 * (np.asarray(target, float) - self.q) - 2 * self.wn * self.dq
        a = self.ddq + np.clip(a_des - self.ddq, -self.jerk * dt, self.jerk * dt)
        self.ddq = np.clip(a, -self.acc, self.acc)
        self.dq = np.clip(self.dq + self.ddq * dt, -self.vel, self.vel)
        self.q = self.q + self.dq * dt
        return self.q

    def reset(self, q: np.ndarray) -> None:
        self.q = np.asarray(q, float).copy()
        self.dq[:] = 0
        self.ddq[:] = 0


class FrankaDriver(ArmDriver):
    """FR3/Panda through the FCI.

    Args:
        robot_ip: the robot's (or franka-sim's) address; the FCI port is fixed at 1337.
        realtime: "enforce" (real-time kernel required) or "ignore".
        gripper: open the Franka Hand (port 1338) and home it at start.
        automatic_recovery: after a reflex, call ``automatic_error_recovery`` and resume.
        impedance: joint impedance stiffness (7,) N m/rad for the robot's internal controller.
        model: "fr3" or "panda" (joint limits).
    """

    n_joints = 7

    def __init__(self, robot_ip: str, realtime: str = "ignore", gripper: bool = True,
                 automatic_recovery: bool = False, impedance: list[float] | None = None, model: str = "fr3"):
        if model not in LIMITS:
            raise ArmDriverError(f"franka model {model!r}: choose one of {sorted(LIMITS)}")
        self.lower, self.upper = LIMITS[model]
        self.ip, self.realtime, self.use_gripper = robot_ip, realtime, gripper
        self.automatic_recovery = automatic_recovery
        self.impedance = impedance
        self._lock = threading.Lock()
        self._target: np.ndarray | None = None
        self._reading: JointReading | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._grip_target, self._grip_width = 1.0, 0.0
        self._grip_thread: threading.Thread | None = None
        self.periods_ns: list[int] = []
        self.cycles = 0
        self.errors: list[str] = []
        self.recoveries = 0

    # -------------------------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 10.0) -> JointReading:
        try:
            import pylibfranka as pf
        except ImportError as e:
            raise ArmDriverError(f"the franka driver needs pylibfranka (pip install pylibfranka): {e}") from e
        self.pf = pf
        cfg = pf.RealtimeConfig.kEnforce if self.realtime == "enforce" else pf.RealtimeConfig.kIgnore
        try:
            self.robot = pf.Robot(self.ip, cfg)
            if self.impedance is not None:
                self.robot.set_joint_impedance(list(self.impedance))
            s = self.robot.read_once()
        except Exception as e:  # noqa: BLE001 - NetworkException, RealtimeException, ...
            raise ArmDriverError(f"cannot connect to the Franka at {self.ip}: {e}") from e
        q = np.array(s.q)
        self._reading = JointReading(now_ns(), q, np.array(s.dq), 0.0)
        self._target = q.copy()
        if self.use_gripper:
            try:
                self.gripper = pf.Gripper(self.ip)
                self.gripper.homing()
                self._grip_width = float(self.gripper.read_once().width)
            except Exception as e:  # noqa: BLE001
                raise ArmDriverError(f"cannot use the Franka Hand at {self.ip}: {e}") from e
            self._grip_thread = threading.Thread(target=self._gripper_loop, name="franka-gripper", daemon=True)
            self._grip_thread.start()
        self._thread = threading.Thread(target=self._control_loop, name="franka-1khz", daemon=True)
        self._thread.start()
        return self._reading

    def _control_loop(self) -> None:
        pf = self.pf
        while not self._stop.is_set():
            try:
                self._run_control()
                return
            except pf.ControlException as e:
                msg = f"libfranka: {e}"
                self.errors.append(msg)
                log.error("control stopped: %s", msg)
                with self._lock:
                    self._error = msg
                if not self.automatic_recovery or self._stop.is_set():
                    return
                if not self.recover():
                    return

    def _run_control(self) -> None:
        pf = self.pf
        ctrl = self.robot.start_joint_position_control(pf.ControllerMode.JointImpedance)
        state, _ = ctrl.readOnce()
        tracker = JerkLimitedTracker(np.array(state.q_d))
        with self._lock:
            self._target = np.array(state.q_d)
        last = None
        while True:
            state, dur = ctrl.readOnce()
            t = now_ns()
            if last is not None:
                self.periods_ns.append(t - last)
                if len(self.periods_ns) > 20000:
                    del self.periods_ns[:10000]
            last = t
            with self._lock:
                target = self._target
                self._reading = JointReading(t, np.array(state.q), np.array(state.dq), self._grip_width)
            dt = max(dur.to_sec(), 1e-3)
            cmd = pf.JointPositions(list(tracker.step(target, dt)))
            stopping = self._stop.is_set() and np.all(np.abs(tracker.dq) < 1e-3)
            if stopping:
                cmd.motion_finished = True
            ctrl.writeOnce(cmd)
            self.cycles += 1
            if stopping:
                return

    def recover(self) -> bool:
        """``automatic_error_recovery`` and resume control from the measured state; True if it worked."""
        try:
            self.robot.automatic_error_recovery()
            q = np.array(self.robot.read_once().q)
        except Exception as e:  # noqa: BLE001
            log.error("automatic error recovery failed: %s", e)
            return False
        with self._lock:
            self._target, self._error = q, None
        self.recoveries += 1
        log.warning("recovered from a reflex (%d so far); resuming from the measured state", self.recoveries)
        if self._thread is not None and not self._thread.is_alive():
            self._thread = threading.Thread(target=self._control_loop, name="franka-1khz", daemon=True)
            self._thread.start()
        return True

    def _gripper_loop(self) -> None:
        sent = None
        while not self._stop.wait(0.05):
            target = self._grip_target
            if sent is None or abs(target - sent) > 0.05:
                try:
                    self.gripper.move(float(np.clip(target, 0, 1)) * MAX_WIDTH, 0.1)
                    sent = target
                except Exception as e:  # noqa: BLE001 - a failed grasp/move is reported, not fatal
                    log.warning("gripper move failed: %s", e)
                    sent = target
            try:
                self._grip_width = float(self.gripper.read_once().width)
            except Exception:  # noqa: BLE001
                pass

    # -------------------------------------------------------------------------------- ArmDriver
    def read(self) -> JointReading:
        with self._lock:
            if self._error is not None:
                raise ArmDriverError(self._error)
            return self._reading

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        with self._lock:
            self._target = np.asarray(q, float).copy()
        self._grip_target = float(gripper_open)

    def loop_stats(self) -> dict[str, float]:
        """1 kHz control-loop period statistics, ms."""
        p = np.array(self.periods_ns[-5000:]) / 1e6
        if len(p) == 0:
            return {}
        return {"franka.period_p50_ms": float(np.percentile(p, 50)), "franka.period_p99_ms": float(np.percentile(p, 99)),
                "franka.period_max_ms": float(p.max()), "franka.cycles": float(self.cycles),
                "franka.recoveries": float(self.recoveries)}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._grip_thread is not None:
            self._grip_thread.join(timeout=2)
        try:
            self.robot.stop()
        except Exception:  # noqa: BLE001 - already stopped or disconnected
            pass
