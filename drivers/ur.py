"""Universal Robots arm driver (UR5e and the other e-Series and CB3 arms) on ``ur_rtde``.

``ur_rtde`` (SDU Robotics, pinned 1.6.1, extra ``ur``) uploads its control script to the robot
and talks RTDE: :class:`rtde_receive.RTDEReceiveInterface` streams the state (q, dq, TCP pose,
robot/safety status bits, the controller timestamp, ``actual_TCP_force``), :class:`rtde_control.RTDEControlInterface`
sends ``servoJ`` targets, one per arm-node tick: 500 Hz on an e-Series, 125 Hz on a CB3 (the arm
node's ``rate_hz`` should match), with ``lookahead_time`` and ``gain`` from the config
(URScript manual, ``servoj``: lookahead 0.03-0.2 s smooths the trajectory, gain 100-2000 is the
proportional gain).

Faults: a protective stop, an emergency stop, a stopped program (our watchdog tripped, someone
pressed stop) and a lost connection make :meth:`UrDriver.read` raise
:class:`~robot_stack.drivers.arm.ArmDriverError` naming the cause; the arm node holds and counts
it. Recovery runs on a worker thread (the dashboard calls take seconds and must not stall the
servo loop): unlock the protective stop through the dashboard server (a real controller allows it
5 s after the stop), close the safety popup, upload the control script again and re-arm the
watchdog. It starts by itself when ``auto_recover`` is set, else on :meth:`UrDriver.recover` (the
arm node's ``recover`` control message).

Watchdog: ``setWatchdog(watchdog_hz)`` arms the controller's RTDE watchdog on the command register,
so the robot stops its program by itself when our process dies or stalls for longer than
1 / ``watchdog_hz`` (every ``servoJ`` feeds it).

Gripper: a Robotiq 2F-85 on ``gripper_port`` (:mod:`robot_stack.drivers.robotiq`, Modbus RTU,
through the tool flange or a USB RS-485 adapter), activated at start and served on its own
thread; its faults are driver faults. Without one the reported opening is 0.

Wrench: ``actual_TCP_force`` (``getActualTCPForce``) becomes ``JointReading.wrench``: the external
wrench at the TCP in the controller's base frame, [Fx Fy Fz] N and [Tx Ty Tz] N m, payload
compensated (RTDE guide, ``actual_TCP_force``). An e-Series measures it with its flange F/T sensor
(call ``zero_ftsensor`` with the tool free first); a CB3 estimates it from joint currents, with
errors of several N. The Menagerie UR5e's base frame is the controller's (its FK at q = 0 puts
the TCP at x = -0.817 m, as on the robot), so ``ee_pose`` and the wrench share the frame.

Clock: the controller ``timestamp`` (s since its start) is mapped to the stack clock with
:class:`~robot_stack.runtime.clock.DeviceClockMapper` (minimum-offset envelope of the reading time).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.clock import DeviceClockMapper, now_ns
from robot_stack.runtime.devices import DeviceConfig, Check, path_check, tcp_port_open

from .arm import ArmDriver, ArmDriverError, JointReading

log = logging.getLogger(__name__)

SAFETY_MODES = {
    1: "normal",
    2: "reduced",
    3: "protective stop",
    4: "recovery",
    5: "safeguard stop",
    6: "system emergency stop",
    7: "robot emergency stop",
    8: "violation",
    9: "fault",
    10: "validate joint id",
    11: "undefined safety mode",
    12: "automatic mode safeguard stop",
    13: "system three position enabling stop",
}


class UrDriver(ArmDriver):
    """A UR arm through ``ur_rtde``.

    Args:
        host: the robot's (or the emulator's) address.
        frequency: RTDE rate, Hz (500 e-Series, 125 CB3; -1: ur_rtde picks from the controller version).
        lookahead_time: servoJ lookahead, s (0.03-0.2).
        gain: servoJ proportional gain (100-2000).
        watchdog_hz: RTDE watchdog minimum frequency, Hz (0: not armed).
        auto_recover: after a protective stop or a stopped program, recover by itself.
        recover_timeout_s: give up unlocking a protective stop after this long, s.
        lower, upper: (6,) joint limits, rad (the robot model's; the controller enforces its own).
    """

    n_joints = 6

    def __init__(
        self,
        host: str,
        frequency: float = 500.0,
        lookahead_time: float = 0.1,
        gain: float = 300.0,
        watchdog_hz: float = 10.0,
        auto_recover: bool = False,
        recover_timeout_s: float = 15.0,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
        gripper_port: str | None = None,
    ):
        self.host, self.frequency = host, float(frequency)
        self.lookahead, self.gain, self.watchdog_hz = float(lookahead_time), float(gain), float(watchdog_hz)
        self.auto_recover, self.recover_timeout_s = auto_recover, recover_timeout_s
        self.lower = np.full(6, -2 * np.pi) if lower is None else np.asarray(lower, float)
        self.upper = np.full(6, 2 * np.pi) if upper is None else np.asarray(upper, float)
        self.servo_dt = 1.0 / (frequency if frequency > 0 else 500.0)
        self.clock = DeviceClockMapper()
        self.rx = self.ctl = self.dash = None
        self._fault: str | None = None
        self._recovering = threading.Event()
        self._lock = threading.Lock()  # ur_rtde control calls from the servo loop and the recovery thread
        self._last: JointReading | None = None
        self._last_ts = -1.0
        self._step_s = self.servo_dt  # the period the next command's step was limited for, s
        self.recoveries = 0
        self.faults = 0
        self.gripper_port = gripper_port
        self.gripper = None  # Robotiq2F85 once started
        self._grip_cmd = 1.0  # commanded opening, 0..1
        self._grip_width = 0.0  # measured opening, m (0 without a gripper)
        self._grip_error: str | None = None
        self._grip_stop = threading.Event()

    # ------------------------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 10.0) -> JointReading:
        try:
            import dashboard_client
            import rtde_control
            import rtde_receive
        except ImportError as e:
            raise ArmDriverError(f"ur driver needs ur_rtde: pip install \"robot-stack[ur]\" ({e})") from None
        deadline = time.monotonic() + timeout_s
        while True:  # the controller may still be booting (or the emulator starting): retry until the deadline
            try:
                self.rx = rtde_receive.RTDEReceiveInterface(self.host, self.frequency)
                self.dash = dashboard_client.DashboardClient(self.host)
                self.dash.connect()
                self.ctl = rtde_control.RTDEControlInterface(self.host, self.frequency)
                break
            except RuntimeError as e:
                self.stop()
                if time.monotonic() > deadline:
                    raise ArmDriverError(f"UR at {self.host}: {e}") from None
                log.info("UR at %s not reachable yet (%s): retrying", self.host, e)
                time.sleep(0.5)
        self._arm_watchdog()
        if self.gripper_port:
            self._start_gripper()
        err: Exception | str = "no state read"
        while time.monotonic() < deadline:
            try:
                return self.read()
            except ArmDriverError as e:
                err = e
            time.sleep(0.05)
        self.stop()
        raise ArmDriverError(f"UR at {self.host} not ready within {timeout_s:.0f} s: {err}")

    def _start_gripper(self) -> None:
        """Activate the Robotiq 2F-85 and serve it on a thread (serial I/O stays off the servo loop)."""
        from .robotiq import Robotiq2F85, RobotiqError, width_from_position

        self._grip_stop.clear()  # (a failed connection attempt's stop() set it)
        try:
            self.gripper = Robotiq2F85(self.gripper_port)
            self.gripper.activate()
        except (RobotiqError, OSError) as e:
            self.stop()
            raise ArmDriverError(f"Robotiq 2F-85 on {self.gripper_port}: {e}") from None

        def serve():
            sent = None
            while not self._grip_stop.is_set():
                try:
                    target = round(255 * (1.0 - min(max(self._grip_cmd, 0.0), 1.0)))
                    if target != sent:
                        self.gripper.move(target)
                        sent = target
                    st = self.gripper.status()
                    self._grip_width = width_from_position(st.position)
                    self._grip_error = st.fault_text
                except RobotiqError as e:
                    self._grip_error = str(e)
                time.sleep(0.02)

        threading.Thread(target=serve, name="robotiq", daemon=True).start()

    def _arm_watchdog(self) -> None:
        if self.watchdog_hz > 0:
            self.ctl.setWatchdog(self.watchdog_hz)

    def stop(self) -> None:
        """servoStop, stop the control script, disconnect (the controller holds the arm)."""
        self._grip_stop.set()
        for fn in (
            lambda: self.gripper.close(),
            lambda: self.ctl.servoStop(),
            lambda: self.ctl.stopScript(),
            lambda: self.ctl.disconnect(),
            lambda: self.rx.disconnect(),
            lambda: self.dash.disconnect(),
        ):
            try:
                fn()
            except Exception:  # noqa: BLE001  (best effort at shutdown: the robot may be gone already)
                pass

    # ------------------------------------------------------------------------------- state
    def fault(self) -> str | None:
        """Why the robot will not follow commands now, or None."""
        if not self.rx.isConnected():
            return f"RTDE connection to {self.host} lost"
        mode = int(self.rx.getSafetyMode())
        if mode not in (1, 2):
            return f"UR safety mode: {SAFETY_MODES.get(mode, mode)}"
        if not self.ctl.isProgramRunning():
            return "UR control script not running (stopped by the watchdog, the pendant or the dashboard)"
        return None

    def read(self) -> JointReading:
        if self._recovering.is_set():
            raise ArmDriverError(f"recovering from: {self._fault}")
        why = self.fault()
        if why is not None:
            if self._fault is None:  # a new fault
                self._fault = why
                self.faults += 1
                log.error("UR fault: %s", why)
                if self.auto_recover:
                    self.recover()
            raise ArmDriverError(why)
        if self._grip_error is not None:
            raise ArmDriverError(f"Robotiq 2F-85: {self._grip_error}")
        if self._fault is not None:
            log.warning("UR recovered from: %s", self._fault)
            self._fault = None
        ts = float(self.rx.getTimestamp())
        if ts != self._last_ts or self._last is None:
            self._last_ts = ts
            stamp = self.clock.map(int(ts * 1e9), now_ns())
            self._last = JointReading(
                stamp,
                np.array(self.rx.getActualQ()),
                np.array(self.rx.getActualQd()),
                self._grip_width,
                wrench=np.array(self.rx.getActualTCPForce(), np.float64),
            )
        return self._last

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        self._grip_cmd = float(gripper_open)
        if self._fault is not None or self._recovering.is_set():
            return  # never command a stopped robot (the arm node holds meanwhile)
        # t: the time this target is to be reached in. The arm node's guard limits each step by the
        # period that really passed (overruns included), so that period (set_step_period), not the
        # nominal one, is the step's time: a late tick's larger step then implies the speed it
        # really has (with the nominal 2 ms a 7 ms overrun read as 3.5x, over a UR's speed limit)
        t = min(max(self._step_s, self.servo_dt), 0.05)
        self._step_s = self.servo_dt
        with self._lock:
            self.ctl.servoJ([float(x) for x in q], 0.0, 0.0, t, self.lookahead, self.gain)

    def set_step_period(self, dt_s: float) -> None:
        self._step_s = float(dt_s)

    def loop_stats(self) -> dict[str, float]:
        m = {"ur.faults": float(self.faults), "ur.recoveries": float(self.recoveries)}
        if self.rx is not None:
            m.update(
                {
                    "ur.safety_mode": float(self.rx.getSafetyMode()),
                    "ur.robot_mode": float(self.rx.getRobotMode()),
                    "ur.safety_status_bits": float(self.rx.getSafetyStatusBits()),
                    "ur.robot_status_bits": float(self.rx.getRobotStatus()),
                }
            )
        return m

    # ------------------------------------------------------------------------------- recovery
    can_recover = True

    def recover(self) -> bool:
        """Start recovery on a worker thread (no-op while one runs); True when started."""
        if self._recovering.is_set():
            return False
        self._recovering.set()
        threading.Thread(target=self._recover, name="ur-recover", daemon=True).start()
        return True

    def _recover(self) -> None:
        try:
            deadline = time.monotonic() + self.recover_timeout_s
            while int(self.rx.getSafetyMode()) == 3:  # protective stop: unlock once allowed
                try:
                    self.dash.unlockProtectiveStop()  # raises while the controller refuses (within 5 s of the stop)
                    reply = "unlocked"
                except RuntimeError as e:
                    reply = str(e)
                time.sleep(0.1)
                if int(self.rx.getSafetyMode()) != 3:
                    break
                if time.monotonic() > deadline:
                    log.error(
                        "UR recovery: protective stop still locked after %.0f s (%s)", self.recover_timeout_s, reply
                    )
                    return
                time.sleep(0.5)
            if int(self.rx.getSafetyMode()) not in (1, 2):
                log.error(
                    "UR recovery: safety mode %s needs a person at the pendant",
                    SAFETY_MODES.get(int(self.rx.getSafetyMode())),
                )
                return
            self.dash.closeSafetyPopup()
            with self._lock:
                if not self.ctl.isProgramRunning():
                    self.ctl.reuploadScript()
                t_end = time.monotonic() + 5.0
                while not self.ctl.isProgramRunning() and time.monotonic() < t_end:
                    time.sleep(0.05)
                self._arm_watchdog()
            self.recoveries += 1
            log.warning("UR recovery done (%d so far)", self.recoveries)
        except RuntimeError as e:
            log.error("UR recovery failed: %s", e)
        finally:
            self._recovering.clear()


class UrConfig(DeviceConfig):
    """arm driver ``ur``: a Universal Robots arm through ur_rtde (RTDE 30004, dashboard 29999,
    script port 30003); SDK: ur_rtde 1.6.1 (extra ``ur``)."""

    type: Literal["ur"] = "ur"
    extra = "ur"
    requires = ("rtde_control", "rtde_receive", "dashboard_client")
    robot_ip: str = Field("192.168.1.102", description="the controller's address (RTDE 30004, dashboard 29999)")
    frequency: float = Field(
        500.0, description="RTDE rate, Hz: 500 e-Series, 125 CB3 (-1: from the controller version)"
    )
    lookahead_time: float = Field(0.1, ge=0.03, le=0.2, description="servoJ lookahead time, s")
    gain: float = Field(300.0, ge=100, le=2000, description="servoJ proportional gain")
    watchdog_hz: float = Field(10.0, ge=0, description="RTDE watchdog minimum frequency, Hz (0: off)")
    auto_recover: bool = Field(False, description="after a protective stop or a stopped program, recover by itself")
    recover_timeout_s: float = Field(15.0, gt=0, description="give up unlocking a protective stop after this, s")
    gripper_port: str | None = Field(None, description="serial port of a Robotiq 2F-85 (Modbus RTU; None: no gripper)")

    def default_robot(self, config) -> str:
        """UR5e with a Robotiq 2F-85."""
        return "ur5e_robotiq"

    def doctor(self) -> list[Check]:
        out = []
        for port, what in ((30004, "RTDE"), (29999, "dashboard")):
            why = tcp_port_open(self.robot_ip, port)
            out.append(
                Check(
                    why is None,
                    f"UR at {self.robot_ip} ({what} {port})",
                    "answers" if why is None else why,
                    ""
                    if why is None
                    else "power the robot and turn Remote Control on (Settings -> System); "
                    "check the network and robot_ip",
                )
            )
        if self.gripper_port:
            out.append(
                path_check(
                    f"Robotiq 2F-85 port {self.gripper_port}",
                    self.gripper_port,
                    "start socat for the tool flange, or plug in the USB RS-485 adapter",
                )
            )
        return out

    def build(self, ctx, params) -> UrDriver:
        from robot_stack.control.robot_model import RobotModel

        m = RobotModel.load(params.robot_name(ctx.config))
        return UrDriver(
            self.robot_ip,
            self.frequency,
            self.lookahead_time,
            self.gain,
            self.watchdog_hz,
            self.auto_recover,
            self.recover_timeout_s,
            lower=m.lower,
            upper=m.upper,
            gripper_port=self.gripper_port,
        )
