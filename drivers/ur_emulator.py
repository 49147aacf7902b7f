"""A protocol-level Universal Robots e-Series controller emulator, backed by MuJoCo (UR5e model).

``ur_rtde`` connects to it unmodified: no UR emulator can be installed from a package registry
(URSim ships only as a Docker image), so the UR driver is tested against this stand-in, to the
standard of the Franka driver on franka-sim. Protocol facts come from UR's RTDE guide, UR's
dashboard server manual and the ``ur_rtde`` control script's register protocol; the code is ours.

Ports (on ``host``; each emulator takes its own loopback address in tests, e.g. 127.0.0.7):

- 30004 RTDE (protocol v2, :mod:`robot_stack.drivers.rtde_wire`): controller version 5.11.1,
  output recipes streamed at their own frequency (at most the 500 Hz controller rate), input
  recipes writing the controller's registers.
- 29999 dashboard server: play, stop, pause, power on/off, brake release, unlock protective stop
  (refused within ``unlock_delay_s`` of the stop, 5 s on a real controller), close popup, close
  safety popup, robotmode, safetymode, safetystatus, programState, running, PolyscopeVersion,
  get serial number, is in remote control, quit.
- 30003 script port: a script sent here replaces the running program. The emulator runs
  ``ur_rtde``'s control script (recognized by its ``def rtde_control():``) as its register
  protocol: command in input int register 0 (+ the script's ``reg_offset_int``), arguments in the
  input double registers, "ready" (1) and "done" (2) in output int register 0. Commands run:
  moveJ (1), speedStop (15), servoJ (11), servoStop (16), watchdog kick (24), protectiveStop (31),
  stopL/stopJ (33/34), setWatchdog (35), stopScript (255). Any other command is answered "done"
  without motion and counted in ``unsupported_commands`` (the driver never sends one).

Controller model: every 2 ms (the e-Series rate) the joint target moves toward the servoJ target
(first-order, time constant lookahead_time / 4) and the MuJoCo UR5e follows it under the sim's
joint impedance law (``robot_stack/robots/ur5e_robotiq.yaml``). ``actual_TCP_pose`` is the model's
TCP site ([x y z rx ry rz], rotation vector) in the base frame; ``actual_TCP_force`` is the sim's wrist
wrench (:meth:`SimWorld.tcp_wrench`: the contacts on the tool, base frame, N and N m about the TCP),
what an e-Series reports from its flange F/T sensor, payload-compensated and noise-free here.

Failures, as a real controller has them:

- a servoJ target that implies a joint speed over the UR5e limit (3.14 rad/s) from the current
  target within its time ``t``: protective stop (safety mode 3, program stopped, arm held);
- the watchdog (``rtde_set_watchdog`` on the command register, action stop) not fed for longer
  than 1 / min_frequency: the program stops and the arm halts;
- the RTDE client that writes the command register disconnects: the program stops;
- :meth:`UrController.inject_protective_stop` (tests: a collision, a safety-plane violation).

Run: ``python -m robot_stack.drivers.ur_emulator --host 127.0.0.7`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import collections
import logging
import socket
import struct
import threading
import time

from robot_stack.runtime.clock import now_ns as _now_ns
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from robot_stack.drivers import rtde_wire as w

log = logging.getLogger(__name__)

RTDE_PORT, DASHBOARD_PORT, SCRIPT_PORT = 30004, 29999, 30003
CONTROLLER_VERSION = (5, 11, 1, 108318)
POLYSCOPE = "URSoftware 5.11.1.108318 (Dec 01 2021)"
SERIAL = "20205500000"
PERIOD_S = 0.002  # e-Series controller rate, 500 Hz
# robot modes, safety modes, runtime states (RTDE guide)
ROBOT_POWER_OFF, ROBOT_IDLE, ROBOT_RUNNING = 3, 5, 7
SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP = 1, 3
RUNTIME_STOPPED, RUNTIME_PLAYING = 1, 2
READY, DONE = 1, 2
#: ur_rtde control-script command numbers (its RTDE::RobotCommand::Type)
CMD_MOVEJ, CMD_SPEED_STOP, CMD_SERVOJ, CMD_SERVO_STOP, CMD_WATCHDOG = 1, 15, 11, 16, 24
CMD_PROTECTIVE_STOP, CMD_STOPL, CMD_STOPJ, CMD_SET_WATCHDOG, CMD_STOP_SCRIPT = 31, 33, 34, 35, 255
#: commands the script handles "real-time": processed and answered "ready", never "done"
REALTIME_CMDS = {24, 11, 9, 10, 6, 25, 26, 27, 38, 58}


def _now_s() -> float:
    """The controller's time, s: the stack's clock (a test's fake clock steps it)."""
    return _now_ns() / 1e9


@dataclass
class Registers:
    """The controller's general-purpose registers (48 of each, as on PolyScope >= 5.4)."""

    in_int: np.ndarray = field(default_factory=lambda: np.zeros(48, np.int64))
    in_double: np.ndarray = field(default_factory=lambda: np.zeros(48))
    out_int: np.ndarray = field(default_factory=lambda: np.zeros(48, np.int64))
    out_double: np.ndarray = field(default_factory=lambda: np.zeros(48))


class UrController:
    """The emulated controller: robot and safety state, registers, the running program, physics.

    Thread-safe: servers call in from their threads, :meth:`tick` runs on the 500 Hz loop.

    Args:
        robot: robot model with a sim block (default the UR5e with a Robotiq 2F-85).
        unlock_delay_s: a protective stop can be unlocked this long after it happened, s.
        max_joint_speed: servoJ speed limit, rad/s (UR5e datasheet: 180 deg/s every joint).
    """

    def __init__(
        self, robot: str = "ur5e_robotiq", unlock_delay_s: float = 5.0, max_joint_speed: float = 3.1416, world=None
    ):
        from robot_stack.drivers.sim_model import SceneSpec
        from robot_stack.drivers.sim_world import SimWorld

        # the world: its own, or a sim-world node's (which steps the physics and renders cameras)
        self.world = world if world is not None else SimWorld(SceneSpec(robot=robot, width=64, height=48))
        self.n_sub = max(1, round(PERIOD_S / self.world.dt))
        self.lock = threading.RLock()
        self.reg = Registers()
        self.robot_mode, self.safety_mode = ROBOT_RUNNING, SAFETY_NORMAL
        self.unlock_delay_s, self.max_joint_speed = unlock_delay_s, max_joint_speed
        self.program: str | None = None  # "rtde_control" while ur_rtde's script runs
        self.script = ""  # the last control script received
        self.reg_offset_int = self.reg_offset_double = 0
        self.executing = False
        self.servo_target: np.ndarray | None = None
        self.last_servo: np.ndarray | None = None  # the last servoJ target of this program
        self.servo_t, self.servo_lookahead = PERIOD_S, 0.1
        self.move_goal: tuple[np.ndarray, float, float] | None = None  # moveJ (q, v, a)
        self.q_target = self.world.q_target.copy()
        self.qd_target = np.zeros_like(self.q_target)
        self.watchdog_hz = 0.0
        self.watchdog_fed_s = _now_s()
        self.watchdog_trip_gap_ms = 0.0  # time from the last feed to the last watchdog stop, ms
        self.protective_stop_at: float | None = None
        self.t0 = _now_s()
        self.counters = {
            "protective_stops": 0,
            "watchdog_stops": 0,
            "programs": 0,
            "unsupported_commands": 0,
            "servoj": 0,
            "disconnect_stops": 0,
        }
        self.messages: list[str] = []  # what a teach pendant would show (tests read it)
        self.feed_gaps_ms: collections.deque = collections.deque(maxlen=2000)  # command-register write gaps, ms

    # --------------------------------------------------------------------------- state read-out
    def timestamp(self) -> float:
        """Controller time since start, s (RTDE ``timestamp``)."""
        return _now_s() - self.t0

    @property
    def running(self) -> bool:
        return self.program is not None

    def robot_status_bits(self) -> int:
        """Bit 0 power on, bit 1 program running."""
        return int(self.robot_mode >= ROBOT_IDLE) | (int(self.running) << 1)

    def safety_status_bits(self) -> int:
        """Bit 0 normal mode, bit 2 protective stopped, bit 10 stopped due to safety."""
        if self.safety_mode == SAFETY_PROTECTIVE_STOP:
            return (1 << 2) | (1 << 10)
        return 1

    def output(self, name: str):
        """The value of one RTDE output variable (see :data:`rtde_wire.OUTPUTS`)."""
        q, dq, tau, _ = self.world.joint_state()
        if name == "timestamp":
            return self.timestamp()
        if name == "actual_q":
            return q
        if name == "actual_qd":
            return dq
        if name == "target_q":
            return self.q_target
        if name == "target_qd":
            return self.qd_target
        if name in ("actual_TCP_pose", "target_TCP_pose", "actual_tool_flange_pose"):
            p = self.world.tcp_pose()
            return [*p[:3], *Rotation.from_quat(p[3:]).as_rotvec()]
        if name == "actual_TCP_force":
            return [float(x) for x in self.world.tcp_wrench()]
        if name in ("actual_current", "target_current", "target_moment", "joint_control_output"):
            return tau
        if name == "robot_mode":
            return self.robot_mode
        if name in ("safety_mode", "safety_status"):
            return self.safety_mode
        if name == "runtime_state":
            return RUNTIME_PLAYING if self.running else RUNTIME_STOPPED
        if name == "robot_status_bits":
            return self.robot_status_bits()
        if name == "safety_status_bits":
            return self.safety_status_bits()
        if name in ("speed_scaling", "target_speed_fraction"):
            return 1.0
        if name == "joint_mode":
            return [253] * 6  # JOINT_RUNNING_MODE
        if name == "joint_temperatures":
            return [35.0] * 6
        if name.startswith("output_int_register_"):
            return int(self.reg.out_int[int(name.rsplit("_", 1)[1])])
        if name.startswith("output_double_register_"):
            return float(self.reg.out_double[int(name.rsplit("_", 1)[1])])
        if name.startswith("input_int_register_"):
            return int(self.reg.in_int[int(name.rsplit("_", 1)[1])])
        if name.startswith("input_double_register_"):
            return float(self.reg.in_double[int(name.rsplit("_", 1)[1])])
        t = w.OUTPUTS[name]
        return {"VECTOR3D": [0.0] * 3, "VECTOR6D": [0.0] * 6, "VECTOR6INT32": [0] * 6, "DOUBLE": 0.0}.get(t, 0)

    # --------------------------------------------------------------------------- inputs
    def write_inputs(self, names: list[str], values: list) -> None:
        """A client's data package: registers (and the watchdog when its register is written)."""
        with self.lock:
            for n, v in zip(names, values):
                if n.startswith("input_int_register_"):
                    i = int(n.rsplit("_", 1)[1])
                    self.reg.in_int[i] = int(v)
                    if i == self.reg_offset_int:
                        now = _now_s()
                        if self.running:
                            self.feed_gaps_ms.append((now - self.watchdog_fed_s) * 1e3)
                        self.watchdog_fed_s = now
                elif n.startswith("input_double_register_"):
                    self.reg.in_double[int(n.rsplit("_", 1)[1])] = float(v)
            if self.running:
                self._program_step()  # the script reads its registers as soon as they arrive

    # --------------------------------------------------------------------------- program
    def load_script(self, text: str) -> None:
        """A program sent to the script port replaces the running one."""
        with self.lock:
            self._stop_program("a new program was sent")
            if "def rtde_control():" not in text:
                self.messages.append("script not understood by the emulator (only ur_rtde's control script runs)")
                log.warning("script of %d bytes is not ur_rtde's control script: not run", len(text))
                return
            if self.safety_mode != SAFETY_NORMAL or self.robot_mode != ROBOT_RUNNING:
                self.messages.append("program not started: robot not running or protective stop active")
                log.warning("program refused: robot mode %d, safety mode %d", self.robot_mode, self.safety_mode)
                return
            self.script = text
            self.reg_offset_int = _offset(text, "reg_offset_int")
            self.reg_offset_double = _offset(text, "reg_offset_float")
            self.program = "rtde_control"
            self.last_servo = None
            self.counters["programs"] += 1
            self.executing = False
            self.watchdog_hz = 0.0
            self.reg.out_int[self.reg_offset_int] = READY
            log.info(
                "program rtde_control started (register offsets int %d, double %d)",
                self.reg_offset_int,
                self.reg_offset_double,
            )

    def _stop_program(self, why: str) -> None:
        if self.program is not None:
            log.info("program stopped: %s", why)
            self.messages.append(f"program stopped: {why}")
        self.program = None
        self.servo_target = None
        self.move_goal = None
        self.watchdog_hz = 0.0

    def _f(self, i: int) -> float:
        return float(self.reg.in_double[self.reg_offset_double + i])

    def _program_step(self) -> None:
        """The control script's main loop, one pass (under the lock)."""
        o = self.reg_offset_int
        cmd = int(self.reg.in_int[o])
        if cmd in REALTIME_CMDS:
            self._process(cmd)
            if self.running:
                self.reg.out_int[o] = READY
        elif cmd == 0:
            self.executing = False
            self.reg.out_int[o] = READY
        elif not self.executing:
            self.executing = True
            if self._process(cmd) and self.running:
                self.reg.out_int[o] = DONE

    def _process(self, cmd: int) -> bool:
        """Run one command; False when the command stopped the program (stopScript)."""
        if cmd == CMD_SERVOJ:
            q = np.array([self._f(i) for i in range(6)])
            t = max(self._f(8), PERIOD_S)
            # the implied speed of the command stream: from the previous servoJ target (the first
            # one of a program: from the joint target)
            ref = self.last_servo if self.last_servo is not None else self.q_target
            speed = np.abs(q - ref) / t
            if np.any(speed > self.max_joint_speed):
                j = int(np.argmax(speed))
                self._protective_stop(
                    f"C153A1: joint {j} speed {speed[j]:.2f} rad/s over the limit "
                    f"{self.max_joint_speed:.2f} rad/s (servoj target)"
                )
                return True
            self.servo_target, self.servo_t = q, t
            self.last_servo = q
            self.servo_lookahead = float(np.clip(self._f(9), 0.03, 0.2))
            self.move_goal = None
            self.counters["servoj"] += 1
        elif cmd == CMD_WATCHDOG:
            pass  # the register write itself fed the watchdog
        elif cmd == CMD_MOVEJ:
            self.servo_target = None
            self.move_goal = (np.array([self._f(i) for i in range(6)]), self._f(6), self._f(7))
        elif cmd in (CMD_SERVO_STOP, CMD_SPEED_STOP, CMD_STOPJ, CMD_STOPL):
            self.servo_target = None
            self.move_goal = None
        elif cmd == CMD_SET_WATCHDOG:
            self.watchdog_hz = max(0.0, self._f(0))
            self.watchdog_fed_s = _now_s()
        elif cmd == CMD_PROTECTIVE_STOP:
            self._protective_stop("protective stop requested by the program")
        elif cmd == CMD_STOP_SCRIPT:
            self._stop_program("stopScript received")
            return False
        else:
            self.counters["unsupported_commands"] += 1
            log.warning("control-script command %d is not emulated: answered done without effect", cmd)
        return True

    def _protective_stop(self, why: str) -> None:
        self.safety_mode = SAFETY_PROTECTIVE_STOP
        self.protective_stop_at = _now_s()
        self.counters["protective_stops"] += 1
        self.messages.append(f"protective stop: {why}")
        log.warning("PROTECTIVE STOP: %s", why)
        self._stop_program("protective stop")

    def inject_protective_stop(self, why: str = "injected (test)") -> None:
        """A protective stop from outside the program (a collision, a safety plane)."""
        with self.lock:
            self._protective_stop(why)

    def unlock_protective_stop(self) -> str:
        """Dashboard ``unlock protective stop``: the reply line."""
        with self.lock:
            if self.safety_mode != SAFETY_PROTECTIVE_STOP:
                return "Protective stop releasing"  # a no-op on a real controller too
            if _now_s() - (self.protective_stop_at or 0) < self.unlock_delay_s:
                return (
                    f"Cannot unlock protective stop until {self.unlock_delay_s:g}s after occurrence. "
                    "Always inspect cause of protective stop before unlocking"
                )
            self.safety_mode = SAFETY_NORMAL
            return "Protective stop releasing"

    # --------------------------------------------------------------------------- 500 Hz loop
    def tick(self) -> None:
        """One controller period: :meth:`control`, then 2 ms of physics."""
        self.control()
        self.world.step(self.n_sub)

    def sync_to_world(self) -> None:
        """After the world was reset (the arm placed at home): targets from where the arm is."""
        with self.lock:
            self.q_target = self.world.joint_state()[0]
            self.servo_target = None
            self.move_goal = None

    def control(self) -> None:
        """One controller period without physics: watchdog, program pass, the joint target."""
        with self.lock:
            now = _now_s()
            if self.running and self.watchdog_hz > 0 and now - self.watchdog_fed_s > 1.0 / self.watchdog_hz:
                self.counters["watchdog_stops"] += 1
                self.watchdog_trip_gap_ms = (now - self.watchdog_fed_s) * 1e3  # feed -> trip, as this loop saw it
                g = np.array(self.feed_gaps_ms or [0.0])
                log.warning(
                    "watchdog: command-register write gaps before the trip: p50 %.1f ms, p99 %.1f ms, "
                    "max %.1f ms over %d writes",
                    np.percentile(g, 50),
                    np.percentile(g, 99),
                    g.max(),
                    len(g),
                )
                self._stop_program(
                    f"RTDE watchdog: input_int_register_{self.reg_offset_int} not updated for "
                    f"{(now - self.watchdog_fed_s) * 1e3:.0f} ms (min frequency {self.watchdog_hz:g} Hz)"
                )
            if self.running:
                self._program_step()
            prev = self.q_target.copy()
            halted = self.safety_mode != SAFETY_NORMAL or self.robot_mode != ROBOT_RUNNING
            if halted:
                self.q_target = self.world.joint_state()[0]  # a stop: hold where the arm is
            elif self.servo_target is not None:
                a = min(1.0, PERIOD_S / (self.servo_lookahead / 4))
                self.q_target = self.q_target + a * (self.servo_target - self.q_target)
            elif self.move_goal is not None:
                q, v, acc = self.move_goal
                step = np.clip(q - self.q_target, -max(v, 1e-3) * PERIOD_S, max(v, 1e-3) * PERIOD_S)
                self.q_target = self.q_target + step
                if np.abs(q - self.q_target).max() < 1e-6:
                    self.move_goal = None
            self.qd_target = (self.q_target - prev) / PERIOD_S
            self.world.set_target(self.q_target, self.world.gripper_open)

    def on_client_lost(self, writes_command_register: bool) -> None:
        """An RTDE client disconnected; the one feeding the program's command register stops it."""
        with self.lock:
            if writes_command_register and self.running:
                self.counters["disconnect_stops"] += 1
                self._stop_program("the RTDE client writing the command register disconnected")


def check_loopback(host: str) -> None:
    """The emulator serves robot control without authentication (as a UR controller does): it
    listens on loopback addresses only.

    Raises:
        ValueError: ``host`` is not a loopback address.
    """
    import ipaddress

    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"the UR emulator listens on loopback addresses only (127.0.0.0/8), not {host!r}: "
            "RTDE and the dashboard carry no authentication"
        )


def script_commands(text: str) -> dict[int, str]:
    """The control script's command numbers and the first word its branch logs or comments,
    e.g. {11: "servoJ", 16: "servo_stop"}: a check that the installed ur_rtde speaks the numbers
    this emulator implements."""
    out: dict[int, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if (s.startswith("elif cmd == ") or s.startswith("if cmd == ")) and s.endswith(":") and " or " not in s:
            try:
                n = int(s.split("==", 1)[1].rstrip(":").strip())
            except ValueError:
                continue
            for nxt in lines[i + 1 : i + 3]:
                t = nxt.strip()
                if t.startswith("#"):
                    out[n] = t.lstrip("# ").split()[0] if t.lstrip("# ") else ""
                    break
                if t.startswith("textmsg(\""):
                    out[n] = t[len("textmsg(\"") :].split("\"")[0].strip()
                    break
    return out


def _offset(text: str, key: str) -> int:
    """``global reg_offset_int = 24`` -> 24 (0 when the script has none)."""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(f"global {key}"):
            try:
                return int(s.split("=", 1)[1].split("#")[0].strip())
            except ValueError:
                return 0
    return 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


class _RtdeSession:
    """One RTDE client connection: its recipes and its output stream."""

    def __init__(self, ctl: UrController, sock: socket.socket, refused: list[str]):
        self.ctl, self.sock = ctl, sock
        self.refused = refused  # variable names answered NOT_FOUND (the emulator's, shared)
        self.out_names: list[str] = []
        self.out_fmt: struct.Struct | None = None
        self.out_types: list[str] = []
        self.out_every = 1
        self.inputs: dict[int, tuple[list[str], list[str], struct.Struct]] = {}
        self.started = False
        self.send_lock = threading.Lock()

    @property
    def writes_command_register(self) -> bool:
        reg = f"input_int_register_{self.ctl.reg_offset_int}"
        return any(reg in names for names, _, _ in self.inputs.values())

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def serve(self) -> None:
        while True:
            size, kind = struct.unpack(">HB", _recv_exact(self.sock, 3))
            if size < 3:
                raise w.RTDEProtocolError(f"message size {size} < header")
            self.handle(kind, _recv_exact(self.sock, size - 3))

    def handle(self, kind: int, body: bytes) -> None:
        if kind == w.REQUEST_PROTOCOL_VERSION:
            version = struct.unpack(">H", body[:2])[0] if len(body) >= 2 else 0
            self.send(w.frame(kind, bytes([1 if version in (1, 2) else 0])))
        elif kind == w.GET_URCONTROL_VERSION:
            self.send(w.frame(kind, struct.pack(">IIII", *CONTROLLER_VERSION)))
        elif kind == w.SETUP_OUTPUTS:
            freq = struct.unpack(">d", body[:8])[0]
            names = [n for n in body[8:].decode().split(",") if n]
            types = [w.OUTPUTS.get(n, "NOT_FOUND") for n in names]
            if "NOT_FOUND" in types or not 0 < freq <= 500:
                self.refused.extend(n for n, t in zip(names, types) if t == "NOT_FOUND")
                self.send(w.frame(kind, bytes([0]) + ",".join(types).encode()))
                return
            self.out_names, self.out_types = names, types
            self.out_fmt = w.recipe_format(types)
            self.out_every = max(1, round(500 / freq))
            self.send(w.frame(kind, bytes([1]) + ",".join(types).encode()))
        elif kind == w.SETUP_INPUTS:
            names = [n for n in body.decode().split(",") if n]
            types = [w.INPUTS.get(n, "NOT_FOUND") for n in names]
            if "NOT_FOUND" in types:
                self.refused.extend(n for n, t in zip(names, types) if t == "NOT_FOUND")
                self.send(w.frame(kind, bytes([0]) + ",".join(types).encode()))
                return
            rid = len(self.inputs) + 1
            self.inputs[rid] = (names, types, w.recipe_format(types))
            self.send(w.frame(kind, bytes([rid]) + ",".join(types).encode()))
        elif kind == w.START:
            self.started = self.out_fmt is not None or bool(self.inputs)
            self.send(w.frame(kind, bytes([int(self.started)])))
        elif kind == w.PAUSE:
            self.started = False
            self.send(w.frame(kind, bytes([1])))
        elif kind == w.DATA_PACKAGE:
            rid = body[0]
            if rid not in self.inputs:
                self.send(w.text_message(f"data package for unknown input recipe {rid}"))
                return
            names, types, fmt = self.inputs[rid]
            if len(body) - 1 != fmt.size:
                self.send(w.text_message(f"input recipe {rid}: {len(body) - 1} bytes, expected {fmt.size}"))
                return
            self.ctl.write_inputs(names, w.unflatten(types, fmt.unpack(body[1:])))
        else:
            self.send(w.text_message(f"unknown RTDE message type {kind}"))

    def package(self) -> bytes | None:
        if not self.started or self.out_fmt is None:
            return None
        vals = w.flatten([self.ctl.output(n) for n in self.out_names])
        return w.frame(w.DATA_PACKAGE, bytes([1]) + self.out_fmt.pack(*vals))


class UrEmulator:
    """The servers and the 500 Hz loop around a :class:`UrController`.

    Args:
        host: address to listen on (a loopback address in tests).
        controller: the emulated controller (default: a UR5e).
    """

    def __init__(self, host: str = "127.0.0.1", controller: UrController | None = None):
        self.host = host
        self.ctl = controller or UrController()
        self.sessions: list[_RtdeSession] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        self.refused_recipes: list[str] = []

    def start(self, own_loop: bool = True) -> UrEmulator:
        """Listen; ``own_loop``: run the 500 Hz controller loop here (False: the caller calls
        :meth:`UrController.control`, steps the world and calls :meth:`stream` each period).

        Raises:
            ValueError: ``host`` is not a loopback address (:func:`check_loopback`).
            OSError: a port is taken.
        """
        check_loopback(self.host)
        for port, handler in (
            (RTDE_PORT, self._rtde_client),
            (DASHBOARD_PORT, self._dashboard_client),
            (SCRIPT_PORT, self._script_client),
        ):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, port))
            s.listen(8)
            s.settimeout(0.2)
            self._listeners.append(s)
            self._spawn(self._accept, s, handler)
        if own_loop:
            self._spawn(self._loop)
        log.info(
            "UR emulator on %s (RTDE %d, dashboard %d, script %d)", self.host, RTDE_PORT, DASHBOARD_PORT, SCRIPT_PORT
        )
        return self

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for s in self._listeners:
            s.close()
        for sess in list(self.sessions):
            try:
                sess.sock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _accept(self, listener: socket.socket, handler) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(handler, conn)

    def _loop(self) -> None:
        next_t = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            self.ctl.tick()
            tick += 1
            self.stream(tick)
            now = time.monotonic()
            next_t += PERIOD_S
            if next_t < now - 0.05:
                next_t = now  # fell far behind: do not burst
            time.sleep(max(0.0, next_t - time.monotonic()))

    def stream(self, tick: int) -> None:
        """Send each started RTDE client its output package for controller period ``tick``."""
        for sess in list(self.sessions):
            if tick % sess.out_every:
                continue
            try:
                pkg = sess.package()
                if pkg is not None:
                    sess.send(pkg)
            except OSError:
                pass  # its reader thread notices and cleans up

    def _rtde_client(self, conn: socket.socket) -> None:
        sess = _RtdeSession(self.ctl, conn, self.refused_recipes)
        conn.settimeout(None)
        self.sessions.append(sess)
        try:
            sess.serve()
        except (ConnectionError, OSError, w.RTDEProtocolError, struct.error, UnicodeDecodeError) as e:
            log.info("RTDE client gone: %s", e)
        finally:
            self.sessions.remove(sess)
            self.ctl.on_client_lost(sess.writes_command_register)
            conn.close()

    def _script_client(self, conn: socket.socket) -> None:
        """Programs arrive as text; a pause of 50 ms after data ends one program."""
        conn.settimeout(0.05)
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                except TimeoutError:
                    if buf:
                        self.ctl.load_script(buf.decode(errors="replace"))
                        buf = b""
            if buf:
                self.ctl.load_script(buf.decode(errors="replace"))
        except OSError:
            pass
        finally:
            conn.close()

    def _dashboard_client(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        f = conn.makefile("rwb", buffering=0)
        try:
            f.write(b"Connected: Universal Robots Dashboard Server\n")
            for raw in f:
                cmd = raw.decode(errors="replace").strip()
                reply = self.dashboard(cmd)
                f.write(reply.encode() + b"\n")
                if cmd == "quit":
                    break
        except OSError:
            pass
        finally:
            conn.close()

    def dashboard(self, cmd: str) -> str:
        """The dashboard server's reply to one command line (UR dashboard server manual, e-Series)."""
        c = self.ctl
        low = cmd.lower()
        with c.lock:
            if low == "play":
                if c.program is None and c.counters["programs"] == 0:
                    return "Failed to execute: play"
                return "Starting program"
            if low == "stop":
                c._stop_program("dashboard stop")
                return "Stopped"
            if low == "pause":
                c._stop_program("dashboard pause")
                return "Pausing program"
            if low == "power on":
                if c.robot_mode < ROBOT_IDLE:
                    c.robot_mode = ROBOT_IDLE
                return "Powering on"
            if low == "power off":
                c._stop_program("power off")
                c.robot_mode = ROBOT_POWER_OFF
                return "Powering off"
            if low == "brake release":
                if c.robot_mode >= ROBOT_IDLE:
                    c.robot_mode = ROBOT_RUNNING
                return "Brake releasing"
            if low == "unlock protective stop":
                return c.unlock_protective_stop()
            if low == "close safety popup":
                return "closing safety popup"
            if low == "close popup":
                return "closing popup"
            if low.startswith("popup "):
                c.messages.append(cmd[6:])
                return "showing popup"
            if low == "robotmode":
                return "Robotmode: " + {ROBOT_POWER_OFF: "POWER_OFF", ROBOT_IDLE: "IDLE", ROBOT_RUNNING: "RUNNING"}.get(
                    c.robot_mode, "IDLE"
                )
            if low == "safetymode":
                return "Safetymode: " + ("PROTECTIVE_STOP" if c.safety_mode == SAFETY_PROTECTIVE_STOP else "NORMAL")
            if low == "safetystatus":
                return "Safetystatus: " + ("PROTECTIVE_STOP" if c.safety_mode == SAFETY_PROTECTIVE_STOP else "NORMAL")
            if low == "programstate":
                return "PLAYING rtde_control" if c.running else "STOPPED <unnamed>"
            if low == "running":
                return f"Program running: {str(c.running).lower()}"
            if low == "polyscopeversion":
                return POLYSCOPE
            if low == "version":
                return ".".join(map(str, CONTROLLER_VERSION))
            if low == "get serial number":
                return SERIAL
            if low == "get robot model":
                return "UR5"
            if low == "is in remote control":
                return "true"
            if low == "quit":
                return "Disconnected"
            # emulator test hooks (no UR command starts with "emulator")
            if low == "emulator protective stop":
                c.inject_protective_stop("injected through the emulator's test hook")
                return "protective stop injected"
            if low == "emulator status":
                import json

                return json.dumps(
                    {
                        **c.counters,
                        "running": c.running,
                        "safety_mode": c.safety_mode,
                        "watchdog_trip_gap_ms": round(c.watchdog_trip_gap_ms, 1),
                        "refused_recipes": self.refused_recipes,
                        "script_commands": script_commands(c.script),
                        "q_target": [round(float(x), 6) for x in c.q_target],
                    }
                )
        return f"could not understand: '{cmd}'"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="UR e-Series controller emulator (RTDE, dashboard, script port)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--robot", default="ur5e_robotiq", help="robot model (with a sim block)")
    ap.add_argument("--unlock-delay-s", type=float, default=5.0, help="protective stop unlock delay, s")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        emu = UrEmulator(args.host, UrController(args.robot, args.unlock_delay_s)).start()
    except (OSError, ValueError) as e:
        print(f"error: cannot listen on {args.host}: {e}")
        return 2
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
