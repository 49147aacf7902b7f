"""Arm node: the servo loop.

Every tick (``rate_hz``): read the driver; take new waypoint schedules, heartbeats and arm-control
messages from the lossless input; check schedules (``robot_stack.control.safety``: the cheap, vectorised
checks at once, the per-waypoint workspace check of joint schedules in slices under a time budget,
so checking never stalls the loop) and merge them into the trajectory
(``robot_stack.control.interpolation``); evaluate the trajectory at "now" (per-tick IK for Cartesian
schedules); pass the command through the servo guard (joint limits, and velocity, acceleration and
jerk limits on every command: :class:`~robot_stack.control.safety.ServoGuard`); command the driver;
publish ``robot/state``.

Holds: when the schedule runs out (the trajectory holds its last point), when the schedule's
sender has sent no heartbeat for longer than ``safety.heartbeat_timeout_s`` (schedule dropped,
jerk-limited stop), and on e-stop (jerk-limited stop, then hold until a "release" from a source
in ``safety.estop_release``). At start-up the first command is the measured state, so the arm
never jumps. Any message that decodes but is wrong is refused with a named reason and a counter;
nothing unchecked reaches the driver.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
import numpy as np
from pydantic import Field

from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import ARM_DRIVERS
from ..drivers.arm import ArmDriverError, usable_wrench
from robot_stack.control.interpolation import Limits, Trajectory
from robot_stack.comm.messages import ArmControl, Heartbeat, RobotState, WaypointSchedule
from robot_stack.runtime.node import Node, NodeParams
from robot_stack.runtime.realtime import RealtimeConfig, apply_realtime
from robot_stack.control.safety import SafetyConfig, SafetyViolation, ScheduleChecker, ServoGuard

log = logging.getLogger(__name__)

#: a typed device config from the family's registry (a bare type name is short for {type: ...})
ArmDriverConfig, _driver_field = ARM_DRIVERS.field("sim")


class ArmParams(NodeParams):
    driver: ArmDriverConfig = _driver_field
    robot: str | None = Field(None, description="robot model: a shipped name (robot-stack robots) or a "
                                                "description YAML; default: the driver's (sim: its world's robot, franka: fr3_hand)")
    rate_hz: float = Field(500.0, gt=0, le=2000)
    state_rate_hz: float = Field(250.0, gt=0, le=2000)
    startup_timeout_s: float = Field(20.0, gt=0)
    ik_iters_per_tick: int = Field(4, ge=1, le=50)
    check_budget: float = Field(0.25, gt=0, le=0.8, description="fraction of a servo period spent checking schedules")
    max_pending: int = Field(16, ge=1, description="schedules waiting for their checks; more are refused")
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig,
                                     description="SCHED_FIFO priority, CPU affinity, locked memory for the servo loop")
    spy_file: str | None = Field(None, description="record every driver command into this .npz at stop (fault tests)")


    def references(self) -> dict[str, str]:
        return self.driver.references()

    def problems(self, config) -> list[str]:
        """The arm's robot model must exist and be valid (its files are read at start), and a sim
        arm must be the robot its world plays."""
        from robot_stack.control.robot_model import RobotModelError, load_description

        try:
            robot = self.robot_name(config)
            load_description(robot)
        except RobotModelError as e:
            return [f"robot: {' '.join(str(e).split())}"]
        except ValueError as e:  # the driver names no robot its device has (a sim arm the world lacks)
            return [f"driver: {' '.join(str(e).split())}"]
        if self.driver.type == "sim" and self.driver.world in config.nodes:  # a sim arm is its world's robot
            plays = self.driver.default_robot(config)
            if robot != plays:
                return [f"robot = {robot!r}: the sim world {self.driver.world!r} plays {plays!r}"]
        return []

    def robot_name(self, config=None) -> str:
        """The robot model this arm uses: ``robot``, or the driver's default given the setup's
        config (the sim driver: the robot its sim world plays; franka: fr3_hand or panda_hand).

        Raises:
            RobotModelError: neither names one.
        """
        from robot_stack.control.robot_model import RobotModelError

        name = self.robot or self.driver.default_robot(config)
        if name is None:
            raise RobotModelError(f"arm driver {self.driver.type} implies no robot model: set the arm node's robot")
        return name


@dataclass
class _Pending:
    """A schedule whose static checks passed; its workspace scan may still run (joint space)."""

    msg: WaypointSchedule
    points: np.ndarray
    scanned: int


class ArmNode(Node):
    """Servo loop with interpolation, IK and the safety contract."""

    Params = ArmParams

    def configure(self) -> None:
        from robot_stack.control.robot_model import RobotModel

        p = self.params
        # the arm's own model (kinematics, TCP, limits, gripper): from the config or the driver,
        # never from the sim scene
        self.model = RobotModel.load(p.robot_name(self.ctx.config))
        if p.realtime.any:  # before the driver starts its threads, so they inherit it
            self.realtime_report = apply_realtime(p.realtime, f"arm node {self.name}")
        self.driver = p.driver.build(self.ctx, p)
        self.spy = None
        if p.spy_file:
            from robot_stack.drivers.spy import SpyArmDriver

            self.driver = self.spy = SpyArmDriver(self.driver, p.spy_file)
        self.driver_fault: str | None = None
        first = self.driver.start(p.startup_timeout_s)
        self.kin = self.model.kin
        n = self.driver.n_joints
        if n != self.model.n_joints:
            raise ValueError(f"robot model {self.model.name} has {self.model.n_joints} joints, "
                             f"the {p.driver.type} driver {n}")
        self.q_cmd = first.q.copy()  # no jump at start-up: the first target is the measured state
        self.q_ik: np.ndarray | None = None  # the last IK solution (seed of the next)
        self.merge_latency_ms: collections.deque = collections.deque(maxlen=500)
        self.grip_cmd = float(np.clip(first.gripper_width / self.model.gripper_stroke_m, 0, 1)
                              if self.model.gripper_stroke_m > 0 else 0.0)
        self.traj: Trajectory | None = None
        self.grip_traj: Trajectory | None = None
        # joint limits: the model's and the driver's, whichever is tighter
        lower = np.maximum(self.model.lower, self.driver.lower)
        upper = np.minimum(self.model.upper, self.driver.upper)
        s = p.safety.capped_by(self.model.max_vel, self.model.max_acc, self.model.name)
        self.checker = ScheduleChecker(s, lower, upper, fk=self.kin.fk)
        self.counters = self.checker.counters
        self.guard = ServoGuard(s, lower, upper, self.counters, q0=self.q_cmd)
        # the interpolator stretches segments to 90 % of the limits, so the guard rarely has to act
        self.joint_limits = Limits(vel=0.9 * s.per_joint("max_joint_vel", n), acc=0.9 * s.per_joint("max_joint_acc", n))
        self.ee_limits = Limits(vel=(s.max_ee_vel, s.max_ee_ang_vel), acc=s.max_ee_acc)
        self.release_sources = set(s.estop_release) if s.estop_release is not None else (
            {"cli_estop"} | {k for k, nc in self.ctx.config.nodes.items() if nc.kind == "teleop"})
        self.rx = self.ctx.receiver()
        self.pending: collections.deque[_Pending] = collections.deque()
        self.estop = False
        self.active_source = ""
        self.last_heard: dict[str, int] = {}
        self.schedules = 0
        self.stretched = 0
        self.timeout_ns = int(s.heartbeat_timeout_s * 1e9)
        self._budget_s = p.check_budget / p.rate_hz
        self._state_every = max(1, round(p.rate_hz / p.state_rate_hz))
        self._tick = 0
        self._state_stamp = -1
        self._dt = 1.0 / p.rate_hz
        self.mode = "hold"
        self._t_prev = 0
        log.info("arm ready (%s) at q=%s; e-stop release allowed from %s", self.model.name,
                 np.round(self.q_cmd, 3).tolist(), sorted(self.release_sources))

    # ------------------------------------------------------------------------------------ inputs
    def _inputs(self, t: int) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("arm_input", self._on_message, item[1], t)

    def _on_message(self, msg, t: int) -> None:
        if isinstance(msg, Heartbeat):
            self.last_heard[msg.source] = t
        elif isinstance(msg, WaypointSchedule):
            self._schedule(msg, t)
        elif isinstance(msg, ArmControl):
            self._control(msg)
        else:
            self.input_rejections[f"arm_input.unexpected_{msg.SCHEMA}"] += 1
            log.warning("ignored %s from %s on the arm input", msg.SCHEMA, msg.source)

    def _control(self, msg: ArmControl) -> None:
        if msg.kind == "estop":
            if not self.estop:
                self.estop = True
                self.counters["estop"] += 1
                log.error("E-STOP from %s: %s", msg.source, msg.reason or "(no reason given)")
            self._drop_schedule()
        elif msg.kind == "release":
            if not self._may_release(msg.source, "estop_release_refused", "e-stop release"):
                return
            if self.estop:
                log.warning("e-stop released by %s", msg.source)
            self.estop = False
            self._drop_schedule()  # resume from the held command: the guard's state, no jump
        elif msg.kind == "recover":
            if not self._may_release(msg.source, "recover_refused", "recovery request"):
                return
            self._drop_schedule()
            if not hasattr(self.driver, "recover"):
                log.warning("recovery requested by %s: the %s driver recovers by itself or not at all",
                            msg.source, self.params.driver.type)
            elif self.driver.recover():
                log.warning("driver recovery started by %s", msg.source)
        else:
            self._drop_schedule()

    def _may_release(self, source: str, counter: str, what: str) -> bool:
        """Only sources in ``safety.estop_release`` may release an e-stop or start a recovery."""
        if source in self.release_sources:
            return True
        self.counters[counter] += 1
        log.error("%s from %r refused: not in safety.estop_release %s", what, source, sorted(self.release_sources))
        return False

    def _drop_schedule(self) -> None:
        self.traj = None
        self.grip_traj = None
        self.pending.clear()

    def _schedule(self, msg: WaypointSchedule, t: int) -> None:
        if self.driver_fault is not None:
            self.counters["refused_driver_fault"] += 1
            log.warning("schedule from %s refused: the arm driver is in fault (%s)", msg.source, self.driver_fault)
            return
        if self.estop:
            self.counters["refused_estop"] += 1
            log.warning("schedule from %s refused: e-stop active", msg.source)
            return
        if len(self.pending) >= self.params.max_pending:
            self.counters["refused_backlog"] += 1
            log.warning("schedule from %s refused: %d schedules still being checked", msg.source, len(self.pending))
            return
        try:
            self.checker.admit(msg.stamps_ns, msg.positions, msg.space, msg.gripper, t)
            pts = self.checker.joint_static(msg.positions) if msg.space == "joint" else self.checker.pose_static(msg.positions)
        except SafetyViolation:
            return  # logged and counted by the checker; the current plan continues
        # a sender that never heartbeated gets one timeout from its first schedule, then must beat
        self.last_heard.setdefault(msg.source, t)
        self.pending.append(_Pending(msg, pts, 0 if msg.space == "joint" else len(pts)))

    def _advance_checks(self, t: int) -> None:
        """Finish the checks of waiting schedules within this tick's budget; merge those done."""
        budget = self._budget_s
        while self.pending:
            pend = self.pending[0]
            try:
                if pend.scanned < len(pend.points):
                    pend.scanned = self.checker.joint_workspace(pend.points, pend.scanned, budget)
                    if pend.scanned < len(pend.points):
                        return  # resume next tick
            except SafetyViolation:
                self.pending.popleft()
                continue
            self.pending.popleft()
            try:
                self._merge(pend, t)  # may refuse a jump (counted by the checker)
            except SafetyViolation:
                pass
            budget = 0.0  # at most one FK per further schedule this tick

    def _merge(self, pend: _Pending, t: int) -> None:
        msg, pts = pend.msg, pend.points
        if msg.stamp_ns and 0 <= t - msg.stamp_ns < 1_000_000_000:  # send -> merge (same-host clock; a
            self.merge_latency_ms.append((t - msg.stamp_ns) / 1e6)    # sender elsewhere reads out of range)
        t0 = int(msg.stamps_ns[0])
        if msg.space == "joint":
            # a jump is measured against where the current plan is when the new one takes over
            ref = self.traj.eval(t0) if self.traj is not None and self.traj.kind == "joint" else self.q_cmd
            self.checker.joint_jump(pts[0], ref)
            if self.traj is None or self.traj.kind != "joint":
                self.traj = Trajectory("joint", t, self.q_cmd)
            self.stretched += self.traj.merge(msg.stamps_ns, pts, t, self.joint_limits)
        else:
            ee_now = self.kin.fk(self.q_cmd)
            ref = self.traj.eval(t0) if self.traj is not None and self.traj.kind == "pose" else ee_now
            self.checker.pose_jump(pts[0], ref)
            if self.traj is None or self.traj.kind != "pose":
                self.traj = Trajectory("pose", t, ee_now)
                self.q_ik = None  # the new pose path starts where the arm is
            self.stretched += self.traj.merge(msg.stamps_ns, pts, t, self.ee_limits)
        if msg.gripper is not None:
            g = np.clip(np.asarray(msg.gripper, float), 0.0, 1.0)[:, None]
            if self.grip_traj is None:
                self.grip_traj = Trajectory("joint", t, np.array([self.grip_cmd]))
            self.grip_traj.merge(msg.stamps_ns, g, t)
        self.active_source = msg.source
        self.schedules += 1

    # ------------------------------------------------------------------------------------- loop
    def step(self) -> None:
        t = now_ns()
        try:
            reading = self.driver.read()
        except ArmDriverError as e:  # a reflex or lost connection: the robot stopped; hold and report
            if self.driver_fault is None:  # one fault episode is counted once, whatever its reasons
                self.driver_fault = str(e)
                self.counters["driver_fault"] += 1
                log.error("arm driver fault, holding: %s", e)
                self._drop_schedule()
            elif self.driver_fault != str(e):  # e.g. a UR's stopped program, then its protective stop
                self.driver_fault = str(e)
                log.error("arm driver fault, still holding: %s", e)
            self._inputs(t)  # e-stops, heartbeats and recovery requests still count; schedules are refused
            self.mode = "estop"
            self._t_prev = 0
            return
        if self.driver_fault is not None:  # recovered (automatic error recovery): resume from here, no jump
            log.warning("arm driver recovered from: %s", self.driver_fault)
            self.driver_fault = None
            self.q_cmd = reading.q.copy()
            self.q_ik = None
            self.guard.reset(self.q_cmd)
        self._inputs(t)
        self._advance_checks(t)
        if (self.traj is not None and t < self.traj.end_ns
                and t - self.last_heard.get(self.active_source, 0) > self.timeout_ns):
            self.counters["heartbeat_stale"] += 1
            heard = self.last_heard.get(self.active_source)
            log.error("command source %r silent for %s (> %.0f ms): holding", self.active_source,
                      "ever" if heard is None else f"{(t - heard) / 1e6:.0f} ms", self.timeout_ns / 1e6)
            self._drop_schedule()
        # the period that really passed since the last command, overruns included: the guard's
        # profile is then the command stream the driver really sees, limits held in real time
        dt = max((t - self._t_prev) / 1e9, 1e-5) if self._t_prev else self._dt
        if self.estop or self.traj is None:
            q = self.guard.stop(dt)  # jerk-limited stop, then hold where it ended
            self.mode = "estop" if self.estop else "hold"
            self.q_ik = None
        else:
            if self.traj.kind == "joint":
                q_des = self.traj.eval(t)
            else:
                # seeded from the last IK solution, not from the guard's command: the command lags
                # the path wherever the guard smooths, and a lagging seed moves the redundant arm's
                # solution around its null space tick by tick (a desired stream the guard must then
                # smooth again); from a hold, seeded from where the arm is
                seed = self.q_cmd if self.q_ik is None else self.q_ik
                q_des = self.q_ik = self.kin.ik(self.traj.eval(t), seed, iters=self.params.ik_iters_per_tick,
                                                raise_on_fail=False)
            q = self.guard.track(q_des, dt)
            if self.grip_traj is not None:
                self.grip_cmd = float(self.grip_traj.eval(t)[0])
            self.mode = "track" if t < self.traj.end_ns or self.guard.moving else "hold"
        if not np.all(np.isfinite(q)):  # the last gate before the driver: never a non-finite command
            self.counters["servo_non_finite_output"] += 1
            log.error("servo guard produced a non-finite command: holding the last one")
            q = self.q_cmd.copy()
            self.guard.reset(q)
        self.q_cmd = q
        self._t_prev = t
        if self.spy is not None:
            self.spy.tick_ns = t
        self.driver.set_step_period(dt)
        self.driver.command(q, self.grip_cmd)
        if self._tick % self._state_every == 0 and reading.stamp_ns > self._state_stamp:
            self._state_stamp = reading.stamp_ns  # one message per measurement: stamps strictly increase
            wrench = usable_wrench(reading.wrench)
            if wrench is None and reading.wrench is not None:  # never published: read as "none"
                self.counters["wrench_unusable"] += 1
            self.pub.publish(RobotState.TOPIC, RobotState(
                stamp_ns=reading.stamp_ns, q=reading.q, dq=reading.dq, ee_pose=self.kin.fk(reading.q),
                gripper_width=reading.gripper_width, mode=self.mode, safety_events=self.counters.total(),
                wrench=wrench))
        self._tick += 1

    def metrics(self) -> dict[str, float]:
        m = {f"safety.{k}": float(v) for k, v in self.counters.items()}
        if self.merge_latency_ms:  # schedule sent -> merged at this servo tick (the first that uses it)
            a = np.array(self.merge_latency_ms)
            m.update(merge_latency_p50_ms=float(np.percentile(a, 50)), merge_latency_p99_ms=float(np.percentile(a, 99)))
        m.update(schedules=float(self.schedules), stretched_segments=float(self.stretched),
                 pending_schedules=float(len(self.pending)),
                 driver_send_timeouts=float(getattr(self.driver, "send_timeouts", 0)))
        if hasattr(self.driver, "loop_stats"):
            m.update(self.driver.loop_stats())
        return m

    #: longest jerk-limited stop run at shutdown before the driver is released, s
    STOP_ON_SHUTDOWN_S = 2.0

    def _stop_motion(self) -> None:
        """Bring a moving command to rest along the guard's jerk-limited stop before the driver
        is released (a stack stopping, or stopped because another node died, leaves the arm held,
        not cut off mid-motion)."""
        import time

        if self.driver_fault is not None or not self.guard.moving:
            return
        t_prev = self._t_prev or now_ns()  # the profile goes on from the last command sent
        deadline = now_ns() + int(self.STOP_ON_SHUTDOWN_S * 1e9)
        while self.guard.moving and now_ns() < deadline:
            time.sleep(self._dt)
            t = now_ns()
            dt = max((t - t_prev) / 1e9, 1e-5)
            q = self.guard.stop(dt)
            t_prev = self._t_prev = t
            if self.spy is not None:
                self.spy.tick_ns = t
            try:
                self.driver.set_step_period(dt)
                self.driver.command(q, self.grip_cmd)
            except Exception as e:  # the robot is gone: nothing left to stop
                log.error("stop at shutdown: %s", e)
                return
        log.info("arm brought to rest before shutdown")

    def shutdown(self) -> None:
        if hasattr(self, "guard") and hasattr(self, "driver"):
            self._stop_motion()
        if hasattr(self, "driver"):
            self.driver.stop()
        if hasattr(self, "rx"):
            self.rx.close()
