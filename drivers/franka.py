"""Franka (FR3 / Panda) arm driver on ``pylibfranka`` (official Python bindings of libfranka).

A 1 kHz loop in its own process owns the libfranka control loop (``start_joint_position_control`` with the
robot's internal joint impedance controller): each cycle it reads the robot state
(``readOnce``, which paces the loop at the robot's 1 kHz) and writes the next joint position.
The arm node's servo-rate targets (500 Hz, already interpolated and safety-checked) pass through
a jerk-limited second-order tracker before they reach libfranka, because the FCI rejects
commands whose velocity or acceleration jump between cycles ("motion generator ... discontinuity"
reflexes) and the arm node's piecewise-linear interpolation has velocity steps at waypoints.
The tracker's limits stay well below the FR3 datasheet limits (velocity 1.0 rad/s, acceleration
4 rad/s^2, jerk 400 rad/s^3 against 2.62 / 10 / 5000), leaving margin for late cycles.

The loop runs in a child process (spawned) rather than a thread: pylibfranka's blocking
``readOnce`` keeps the GIL, and a 1 kHz thread starved the arm node's 500 Hz servo loop to about
100 Hz. Targets and state cross over shared memory under a lock; errors come back on a queue.

Wrench: the robot's estimate of the external wrench on the end effector, ``O_F_ext_hat_K`` (base
frame, [fx fy fz] N and [tx ty tz] N m about the stiffness frame K, which is the TCP unless
``setK`` moved it; from the joint torque sensors, so errors of a few N in free space and more
near singular postures), becomes ``JointReading.wrench``. Its sign has been reported both ways
between libfranka versions and simulators (libfranka issue 26, franka_ros issue 254): check it
once on the robot (push the hand down: the stack's convention is fz < 0, what the environment
exerts on the tool) before a fast layer trained on the sim uses it.

Errors: a ``ControlException`` (a reflex, a communication-constraint violation) ends the control
loop; :meth:`read` then raises :class:`ArmDriverError` naming libfranka's reason, and the arm
node holds. ``automatic_error_recovery`` (on request, or by ``recover()``) clears reflexes and
restarts control from the measured state. Gripper: ``franka::Gripper`` in a second child process
(homing at start, ``move`` when the commanded opening changes), not a thread beside the 1 kHz
loop: its blocking calls keep the GIL too (``readOnce`` waits for the hand's next UDP state,
up to 17 ms at franka-sim's 60 Hz), so a thread stalled the loop toward the FCI's limit of 20
lost cycles in a row, and a thread frozen while holding the shared lock (at that process's exit)
would have blocked the arm node for good. The arm node never waits on the lock for more than
:data:`LOCK_TIMEOUT_S`: a control process that holds it longer (stuck, or died holding it) is a
driver fault, and the node holds and reports instead of freezing. Sources: libfranka documentation
(``franka::Robot``, ``franka::ActiveControl``, ``franka::Gripper``), FR3 datasheet limits.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import DeviceConfig, Check, realtime_kernel, tcp_port_open
from robot_stack.runtime.realtime import RealtimeConfig

from .arm import ArmDriver, ArmDriverError, JointReading

log = logging.getLogger(__name__)

MAX_WIDTH = 0.08  # Franka Hand opening, m
#: longest the arm node waits for the shared state's lock, s (the 1 kHz process holds it for
#: microseconds a cycle; longer means that process is stuck or died holding it)
LOCK_TIMEOUT_S = 0.1
# joint position limits, rad (FR3 and Panda datasheets)
LIMITS = {
    "fr3": (
        np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159]),
        np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159]),
    ),
    "panda": (
        np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]),
        np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]),
    ),
}


class JerkLimitedTracker:
    """Tracks a position target without overshoot, within velocity, acceleration and jerk limits.

    Each :meth:`step` of ``dt`` s: the desired velocity points at the target, proportional to the
    error (gain ``wn`` 1/s) but never faster than what can still brake within the error at half
    the acceleration limit (v = sqrt(acc * |e|)) nor than ``vel``; the acceleration toward it is
    clipped in its change (``jerk * dt``) and in size (``acc``). Units rad, s.
    """

    def __init__(
        self,
        q0: np.ndarray,
        wn: float = 25.0,
        vel: float = 1.0,
        acc: float = 4.0,
        jerk: float = 400.0,
        kv: float = 30.0,
    ):
        self.q = np.asarray(q0, float).copy()
        self.dq = np.zeros_like(self.q)
        self.ddq = np.zeros_like(self.q)
        self.wn, self.vel, self.acc, self.jerk, self.kv = wn, vel, acc, jerk, kv
        self._target = self.q.copy()
        self.v_ff = np.zeros_like(self.q)

    def step(self, target: np.ndarray, dt: float) -> np.ndarray:
        target = np.asarray(target, float)
        # feed-forward: the target's own velocity (low-passed, tau 20 ms: targets arrive at the servo rate)
        self.v_ff += min(1.0, dt / 0.02) * ((target - self._target) / dt - self.v_ff)
        self._target = target.copy()
        e = target - self.q
        v_brake = np.sqrt(self.acc * np.abs(e))
        v_des = self.v_ff + self.wn * e
        v_des = np.where(
            np.sign(v_des) == np.sign(e),
            np.clip(v_des, -v_brake - np.abs(self.v_ff), v_brake + np.abs(self.v_ff)),
            v_des,
        )
        v_des = np.clip(v_des, -self.vel, self.vel)
        a_des = np.clip(self.kv * (v_des - self.dq), -self.acc, self.acc)
        self.ddq = self.ddq + np.clip(a_des - self.ddq, -self.jerk * dt, self.jerk * dt)
        self.dq = self.dq + self.ddq * dt
        self.q = self.q + self.dq * dt
        return self.q


class _Shared:
    """Shared-memory exchange between the arm node and the 1 kHz process (float64 slots)."""

    # layout: [0:7] target q, [7] gripper target, [8] state stamp ns, [9:16] q, [16:23] dq,
    # [23] gripper width, [24] cycles, [25] period p50 ms, [26] p99 ms, [27] max ms, [28] recoveries,
    # [29:35] O_F_ext_hat_K
    N = 35

    def __init__(self):
        from multiprocessing import shared_memory

        self.shm = shared_memory.SharedMemory(create=True, size=self.N * 8)
        self.a = np.ndarray((self.N,), np.float64, buffer=self.shm.buf)
        self.a[:] = 0


def _attach(shm_name: str):
    """Attach to the arm node's shared segment (the node owns and unlinks it): (shm, float64 view).

    The child is started with the spawn context, so it shares the arm node's resource tracker,
    which tracks names as a set: attaching registers a name already there, and the child must not
    unregister it (that removed the node's own entry, and the node's unlink then made the tracker
    print a KeyError traceback)."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    return shm, np.ndarray((_Shared.N,), np.float64, buffer=shm.buf)


def _franka_process(
    ip, realtime, automatic_recovery, impedance, shm_name, lock, events, rt: dict | None = None
) -> None:
    """The 1 kHz control process (see the module docstring). Reports ("ready", q), ("error", msg).
    ``rt``: :class:`~robot_stack.runtime.realtime.RealtimeConfig` fields for this process (SCHED_FIFO,
    affinity, mlockall), applied first and reported in its log. The only thread that takes ``lock``
    here is this process's main thread."""
    from robot_stack.runtime.lifeline import die_with_parent

    die_with_parent()  # never outlive the arm node
    if rt:
        from robot_stack.runtime.realtime import RealtimeConfig, RealtimeError, apply_realtime

        try:
            apply_realtime(RealtimeConfig(**rt), "franka 1 kHz loop")
        except RealtimeError as e:
            events.put(("error", str(e)))
            return
    try:
        import pylibfranka as pf
    except ImportError as e:
        events.put(("fatal", f"the franka driver needs pylibfranka: {e}"))
        return
    shm, a = _attach(shm_name)
    cfg = pf.RealtimeConfig.kEnforce if realtime == "enforce" else pf.RealtimeConfig.kIgnore
    try:
        robot = pf.Robot(ip, cfg)
        if impedance is not None:
            robot.set_joint_impedance(list(impedance))
        s = robot.read_once()
    except Exception as e:  # noqa: BLE001 - NetworkException, RealtimeException, ...
        events.put(("fatal", f"cannot connect to the Franka at {ip}: {e}"))
        return
    with lock:
        a[0:7] = s.q
        a[8] = now_ns()
        a[9:16] = s.q
        a[16:23] = s.dq
        a[29:35] = s.O_F_ext_hat_K
    events.put(("ready", list(s.q)))
    periods: list[int] = []
    recoveries = 0
    try:
        while True:
            try:
                _control(pf, robot, a, lock, periods)
                return
            except pf.ControlException as e:
                events.put(("error", f"libfranka: {e}"))
                if not automatic_recovery:
                    return  # the arm node holds and reports; restarting the node reconnects
                try:
                    robot.automatic_error_recovery()
                    q = robot.read_once().q
                except Exception as e2:  # noqa: BLE001
                    events.put(("fatal", f"automatic error recovery failed: {e2}"))
                    return
                recoveries += 1
                with lock:
                    a[0:7] = q
                    a[28] = recoveries
                events.put(("recovered", recoveries))
    finally:
        del a
        shm.close()


def _control(pf, robot, a, lock, periods) -> None:
    ctrl = robot.start_joint_position_control(pf.ControllerMode.JointImpedance)
    state, _ = ctrl.readOnce()
    tracker = JerkLimitedTracker(np.array(state.q_d))
    with lock:
        a[0:7] = state.q_d
    last = None
    while True:
        state, dur = ctrl.readOnce()
        t = now_ns()
        if last is not None:
            periods.append(t - last)
        last = t
        with lock:
            target = a[0:7].copy()
            a[8] = t
            a[9:16] = state.q
            a[16:23] = state.dq
            a[29:35] = state.O_F_ext_hat_K
            a[24] += 1
        ctrl.writeOnce(pf.JointPositions(list(tracker.step(target, max(dur.to_sec(), 1e-3)))))
        if len(periods) >= 1000:
            p = np.array(periods) / 1e6
            with lock:
                a[25], a[26], a[27] = np.percentile(p, 50), np.percentile(p, 99), p.max()
            del periods[:]


def _gripper_process(ip, shm_name, events, period_s: float = 0.05) -> None:
    """The Franka Hand's process: connect and home, report ("gripper_ready", width m), then every
    ``period_s`` s ``move`` when the commanded opening (slot 7, 0..1) changed by over 5 % and
    publish the measured width (slot 23, m). Both slots are single aligned float64 words with one
    writer each, read and written without the lock, so this process can never hold the 1 kHz
    loop's lock (see the module docstring)."""
    import time

    from robot_stack.runtime.lifeline import die_with_parent

    die_with_parent()  # never outlive the arm node
    try:
        import pylibfranka as pf

        gripper = pf.Gripper(ip)
        gripper.homing()
        width = float(gripper.read_once().width)
    except Exception as e:  # noqa: BLE001 - ImportError, NetworkException, CommandException
        events.put(("fatal", f"cannot start the Franka Hand at {ip}: {e}"))
        return
    shm, a = _attach(shm_name)
    try:
        a[23] = width
        a[7] = sent = float(np.clip(width / MAX_WIDTH, 0, 1))  # hold the homed opening until commanded
        events.put(("gripper_ready", width))
        failed = 0
        while True:
            time.sleep(period_s)
            target = float(a[7])
            if abs(target - sent) > 0.05:
                try:
                    gripper.move(float(np.clip(target, 0, 1)) * MAX_WIDTH, 0.1)
                except Exception as e:  # noqa: BLE001 - a failed move is reported, not fatal
                    failed += 1
                    events.put(("gripper_warning", f"gripper move failed ({failed} so far): {e}"))
                sent = target
            try:
                a[23] = float(gripper.read_once().width)
            except Exception:  # noqa: BLE001 - the next period reads again
                pass
    finally:
        del a
        shm.close()


class FrankaDriver(ArmDriver):
    """FR3/Panda through the FCI (the 1 kHz loop runs in a child process).

    Args:
        robot_ip: the robot's (or franka-sim's) address; the FCI port is fixed at 1337.
        realtime: "enforce" (real-time kernel required) or "ignore".
        gripper: open the Franka Hand (port 1338) and home it at start.
        automatic_recovery: after a reflex, call ``automatic_error_recovery`` and resume.
        impedance: joint impedance stiffness (7,) N m/rad for the robot's internal controller.
        model: "fr3" or "panda" (joint limits).
        rt: real-time settings of the 1 kHz process (``RealtimeConfig`` fields), or None.
    """

    n_joints = 7

    def __init__(
        self,
        robot_ip: str,
        realtime: str = "ignore",
        gripper: bool = True,
        automatic_recovery: bool = False,
        impedance: list[float] | None = None,
        model: str = "fr3",
        rt: dict | None = None,
    ):
        if model not in LIMITS:
            raise ArmDriverError(f"franka model {model!r}: choose one of {sorted(LIMITS)}")
        self.lower, self.upper = LIMITS[model]
        self.args = (robot_ip, realtime, gripper, automatic_recovery, impedance)
        self.rt = rt
        self.ip = robot_ip
        self._error: str | None = None
        self.proc = None
        self.gripper_proc = None

    def start(self, timeout_s: float = 10.0) -> JointReading:
        import multiprocessing as mp
        import queue
        import time

        ctx = mp.get_context("spawn")
        self.shared = _Shared()
        self.lock = ctx.Lock()
        self.events = ctx.Queue()
        robot_ip, realtime, gripper, automatic_recovery, impedance = self.args
        self.proc = ctx.Process(
            target=_franka_process,
            args=(robot_ip, realtime, automatic_recovery, impedance, self.shared.shm.name, self.lock, self.events),
            kwargs={"rt": self.rt},
            name="franka-1khz",
            daemon=True,
        )
        self.proc.start()
        waiting = {"ready"}
        if gripper:
            self.gripper_proc = ctx.Process(
                target=_gripper_process,
                args=(robot_ip, self.shared.shm.name, self.events),
                name="franka-hand",
                daemon=True,
            )
            self.gripper_proc.start()
            waiting.add("gripper_ready")
        deadline = time.monotonic() + timeout_s
        while waiting:
            try:
                kind, payload = self.events.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.stop()
                what = "robot" if "ready" in waiting else "Franka Hand"
                raise ArmDriverError(
                    f"the Franka at {self.ip} did not answer within {timeout_s:.0f} s (no {what})"
                ) from None
            if kind in ("error", "fatal"):
                self.stop()
                err = ArmDriverError(str(payload))
                if "realtime" in str(payload):
                    err.with_fix("run the arm node on a real-time (PREEMPT_RT) kernel, or set driver.realtime: ignore")
                raise err
            waiting.discard(kind)
        return self.read()

    def _poll_events(self) -> None:
        import queue

        while True:
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind in ("error", "fatal"):
                self._error = str(payload)
                log.error("franka: %s", payload)
            elif kind == "recovered":
                self._error = None
                log.warning("franka recovered from a reflex (%s so far)", payload)
            elif kind == "gripper_warning":
                log.warning("franka hand: %s", payload)

    @contextlib.contextmanager
    def _locked(self):
        """The shared state's lock, waited for at most :data:`LOCK_TIMEOUT_S`.

        Raises:
            ArmDriverError: the control process held it longer (stuck, or died holding it).
        """
        if not self.lock.acquire(timeout=LOCK_TIMEOUT_S):
            self._poll_events()
            alive = self.proc is not None and self.proc.is_alive()
            raise ArmDriverError(
                self._error
                or (
                    f"the Franka control process held the shared state for over {LOCK_TIMEOUT_S * 1e3:.0f} ms "
                    f"({'stuck' if alive else f'exited with code {self.proc.exitcode if self.proc else None}'} "
                    f"while holding it)"
                )
            )
        try:
            yield
        finally:
            self.lock.release()

    def _check_processes(self) -> None:
        self._poll_events()
        if self._error is not None:
            raise ArmDriverError(self._error)
        if self.proc is not None and not self.proc.is_alive():
            raise ArmDriverError(f"the Franka control process exited (code {self.proc.exitcode})")
        g = self.gripper_proc
        if g is not None and not g.is_alive():
            raise ArmDriverError(f"the Franka Hand process exited (code {g.exitcode})")

    def read(self) -> JointReading:
        self._check_processes()
        a = self.shared.a
        with self._locked():
            return JointReading(int(a[8]), a[9:16].copy(), a[16:23].copy(), float(a[23]), wrench=a[29:35].copy())

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        a = self.shared.a
        with self._locked():
            a[0:7] = q
        a[7] = gripper_open  # one aligned word, read by the hand's process without the lock

    def loop_stats(self) -> dict[str, float]:
        """1 kHz control-loop statistics (period in ms over the last 1000 cycles); empty while
        the control process holds the lock too long (:meth:`read` reports that)."""
        a = self.shared.a
        try:
            with self._locked():
                return {
                    "franka.cycles": float(a[24]),
                    "franka.period_p50_ms": float(a[25]),
                    "franka.period_p99_ms": float(a[26]),
                    "franka.period_max_ms": float(a[27]),
                    "franka.recoveries": float(a[28]),
                }
        except ArmDriverError:
            return {}

    def stop(self) -> None:
        for p in (self.proc, self.gripper_proc):
            if p is not None and p.is_alive():
                p.terminate()  # the robot stops the motion when the FCI connection closes
                p.join(3)
                if p.is_alive():
                    p.kill()
                    p.join(2)
        if hasattr(self, "shared"):
            self.shared.shm.close()
            try:
                self.shared.shm.unlink()
            except FileNotFoundError:
                pass


class FrankaConfig(DeviceConfig):
    """arm driver ``franka``: an FR3 or a Panda through the FCI with pylibfranka.

    FCI port 1337, gripper port 1338; SDK: pylibfranka (extra ``franka``).
    """

    type: Literal["franka"] = "franka"
    extra = "franka"
    requires = ("pylibfranka",)
    robot_ip: str = Field("172.16.0.2", description="the robot's FCI address")
    realtime: Literal["enforce", "ignore"] = Field("enforce", description="enforce needs a real-time kernel")
    gripper: bool = Field(True, description="drive the Franka Hand (in its own process)")
    automatic_recovery: bool = Field(False, description="after a reflex, recover automatically and resume")
    impedance: list[float] | None = Field(None, min_length=7, max_length=7, description="joint stiffness, N m/rad")
    model: Literal["fr3", "panda"] = Field("fr3", description="fr3 or panda: the joint limits the driver enforces")
    loop_realtime: RealtimeConfig = Field(
        default_factory=RealtimeConfig,
        description="SCHED_FIFO priority, CPU affinity, locked memory for the 1 kHz process",
    )

    def default_robot(self, config) -> str:
        """FR3 or Panda with a Franka Hand, as ``model`` says."""
        return "fr3_hand" if self.model == "fr3" else "panda_hand"

    def doctor(self) -> list[Check]:
        why = tcp_port_open(self.robot_ip, 1337)  # libfranka's command connection (franka::kCommandPort)
        out = [
            Check(
                why is None,
                f"Franka at {self.robot_ip}",
                "FCI port 1337 answers" if why is None else why,
                ""
                if why is None
                else "power the robot, unlock the joints and enable FCI in Desk; check the "
                "network (the robot's control port, a static address on its subnet)",
            )
        ]
        if self.realtime == "enforce":
            rt = realtime_kernel()
            out.append(
                Check(
                    rt,
                    "real-time kernel",
                    "PREEMPT_RT" if rt else "this kernel is not real-time",
                    ""
                    if rt
                    else "boot a PREEMPT_RT kernel (libfranka refuses to run without one), or "
                    "set driver.realtime: ignore for a test",
                )
            )
        return out

    def build(self, ctx, params) -> FrankaDriver:
        return FrankaDriver(
            self.robot_ip,
            self.realtime,
            self.gripper,
            self.automatic_recovery,
            self.impedance,
            self.model,
            rt=self.loop_realtime.model_dump() if self.loop_realtime.any else None,
        )
