"""Arm node: the servo loop.

Every tick (``rate_hz``): read the driver; take new waypoint schedules, heartbeats and arm-control
messages from the lossless input; check schedules (``robot_stack.safety``) and merge them into
the trajectory (``robot_stack.interpolation``); evaluate the trajectory at "now" (per-tick IK for
Cartesian schedules); pass the command through the servo guard; command the driver; publish
``robot/state``.

Holds: when the schedule runs out (the trajectory holds its last point), when the schedule's
sender has been silent longer than ``safety.heartbeat_timeout_s`` (schedule dropped, hold at the
current command), and on e-stop (hold at the measured position until "release"). At start-up the
first command is the measured state, so the arm never jumps.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from ..clock import now_ns
from ..drivers.arm import ArmDriverError
from ..interpolation import Limits, Trajectory
from ..messages import ArmControl, Heartbeat, RobotState, WaypointSchedule
from ..node import Node, NodeParams
from ..safety import SafetyConfig, SafetyViolation, ScheduleChecker, ServoGuard

log = logging.getLogger(__name__)


class FrankaParams(NodeParams):
    """driver: franka (pylibfranka; FCI port 1337, gripper 1338)."""

    robot_ip: str = "172.16.0.2"
    realtime: Literal["enforce", "ignore"] = Field("enforce", description="enforce needs a real-time kernel")
    gripper: bool = True
    automatic_recovery: bool = Field(False, description="after a reflex, recover automatically and resume")
    impedance: list[float] | None = Field(None, min_length=7, max_length=7, description="joint stiffness, N m/rad")
    model: Literal["fr3", "panda"] = "fr3"


class ArmParams(NodeParams):
    driver: Literal["sim", "franka"] = "sim"
    sim_world: str = Field("sim", description="node name of the sim world (driver: sim)")
    franka: FrankaParams = Field(default_factory=FrankaParams)
    rate_hz: float = Field(500.0, gt=0, le=2000)
    state_rate_hz: float = Field(250.0, gt=0, le=2000)
    startup_timeout_s: float = Field(20.0, gt=0)
    ik_iters_per_tick: int = Field(4, ge=1, le=50)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)


class ArmNode(Node):
    """Servo loop with interpolation, IK and the safety contract."""

    Params = ArmParams

    def configure(self) -> None:
        from robot_stack.kinematics import Kinematics

        p = self.params
        if p.driver == "sim":
            from robot_stack.drivers.sim import SimArmDriver

            cfg, rd = self.ctx.config, self.ctx.run_dir
            self.driver = SimArmDriver(cfg.pub_endpoint(p.sim_world, rd), cfg.in_endpoint(p.sim_world, rd), self.name)
        elif p.driver == "franka":
            from robot_stack.drivers.franka import FrankaDriver

            f = p.franka
            self.driver = FrankaDriver(f.robot_ip, f.realtime, f.gripper, f.automatic_recovery, f.impedance, f.model)
        self.driver_fault: str | None = None
        first = self.driver.start(p.startup_timeout_s)
        self.kin = Kinematics.panda()
        self.q_cmd = first.q.copy()  # no jump at start-up: the first target is the measured state
        self.grip_cmd = float(np.clip(first.gripper_width / 0.085, 0, 1))
        self.traj: Trajectory | None = None
        self.grip_traj: Trajectory | None = None
        self.checker = ScheduleChecker(p.safety, self.driver.lower, self.driver.upper, fk=self.kin.fk)
        self.counters = self.checker.counters
        self.guard = ServoGuard(p.safety, self.driver.lower, self.driver.upper, self.counters)
        n = self.driver.n_joints
        self.joint_limits = Limits(vel=np.broadcast_to(np.asarray(p.safety.max_joint_vel, float), (n,)),
                                   acc=np.broadcast_to(np.asarray(p.safety.max_joint_acc, float), (n,)))
        self.ee_limits = Limits(vel=(p.safety.max_ee_vel, p.safety.max_ee_ang_vel), acc=p.safety.max_ee_acc)
        self.rx = self.ctx.receiver()
        self.estop = False
        self.estop_q: np.ndarray | None = None
        self.active_source = ""
        self.last_heard: dict[str, int] = {}
        self.schedules = 0
        self.stretched = 0
        self.timeout_ns = int(p.safety.heartbeat_timeout_s * 1e9)
        self._state_every = max(1, round(p.rate_hz / p.state_rate_hz))
        self._tick = 0
        self._state_stamp = -1
        self._dt = 1.0 / p.rate_hz
        self.mode = "hold"
        self._t_prev = 0
        log.info("arm ready at q=%s", np.round(self.q_cmd, 3).tolist())

    # ------------------------------------------------------------------------------------ inputs
    def _inputs(self, t: int) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            _, msg = item
            self.last_heard[msg.source] = t
            if isinstance(msg, WaypointSchedule):
                self._schedule(msg, t)
            elif isinstance(msg, ArmControl):
                self._control(msg)
            elif not isinstance(msg, Heartbeat):
                log.warning("ignored %s from %s on the arm input", msg.SCHEMA, msg.source)

    def _control(self, msg: ArmControl) -> None:
        if msg.kind == "estop":
            if not self.estop:
                self.estop = True
                self.estop_q = self.driver.read().q.copy()
                self.counters["estop"] += 1
                log.error("E-STOP from %s: %s", msg.source, msg.reason or "(no reason given)")
            self._drop_schedule()
        elif msg.kind == "release":
            if self.estop:
                log.warning("e-stop released by %s", msg.source)
            self.estop = False
            self.q_cmd = self.driver.read().q.copy()  # resume from where the arm is, no jump
            self._drop_schedule()
        else:
            self._drop_schedule()

    def _drop_schedule(self) -> None:
        self.traj = None
        self.grip_traj = None

    def _schedule(self, msg: WaypointSchedule, t: int) -> None:
        if self.estop:
            self.counters["refused_estop"] += 1
            log.warning("schedule from %s refused: e-stop active", msg.source)
            return
        try:
            if msg.space == "joint":
                # a jump is measured against where the current plan is when the new one takes over
                ref = self.traj.eval(int(msg.stamps_ns[0])) if self.traj is not None and self.traj.kind == "joint" else self.q_cmd
                q = self.checker.joint(msg.positions, ref)
                if self.traj is None or self.traj.kind != "joint":
                    self.traj = Trajectory("joint", t, self.q_cmd)
                self.stretched += self.traj.merge(msg.stamps_ns, q, t, self.joint_limits)
            else:
                ee_now = self.kin.fk(self.q_cmd)
                ref = self.traj.eval(int(msg.stamps_ns[0])) if self.traj is not None and self.traj.kind == "pose" else ee_now
                poses = self.checker.pose(msg.positions, ref)
                if self.traj is None or self.traj.kind != "pose":
                    self.traj = Trajectory("pose", t, ee_now)
                self.stretched += self.traj.merge(msg.stamps_ns, poses, t, self.ee_limits)
        except SafetyViolation:
            return  # logged and counted by the checker; the current plan continues
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
            if self.driver_fault != str(e):
                self.driver_fault = str(e)
                self.counters["driver_fault"] += 1
                log.error("arm driver fault, holding: %s", e)
                self._drop_schedule()
            self.mode = "estop"
            return
        if self.driver_fault is not None:  # recovered (automatic error recovery): resume from here, no jump
            log.warning("arm driver recovered from: %s", self.driver_fault)
            self.driver_fault = None
            self.q_cmd = reading.q.copy()
        self._inputs(t)
        if (self.traj is not None and t < self.traj.end_ns
                and t - self.last_heard.get(self.active_source, t) > self.timeout_ns):
            self.counters["heartbeat_stale"] += 1
            log.error("command source %r silent for > %.0f ms: holding", self.active_source, self.timeout_ns / 1e6)
            self._drop_schedule()
        if self.estop:
            q = self.estop_q
            self.mode = "estop"
        else:
            if self.traj is None:
                q_des = self.q_cmd
            elif self.traj.kind == "joint":
                q_des = self.traj.eval(t)
            else:
                q_des = self.kin.ik(self.traj.eval(t), self.q_cmd, iters=self.params.ik_iters_per_tick,
                                    raise_on_fail=False)
            # rate limit over the time that really passed since the last command (overruns included)
            dt = min((t - self._t_prev) / 1e9, 5 * self._dt) if self._t_prev else self._dt
            q = self.guard.filter(q_des, self.q_cmd, dt)
            if self.grip_traj is not None:
                self.grip_cmd = float(self.grip_traj.eval(t)[0])
            tracking = self.traj is not None and t < self.traj.end_ns
            self.mode = "track" if tracking else "hold"
        self.q_cmd = q
        self._t_prev = t
        self.driver.command(q, self.grip_cmd)
        if self._tick % self._state_every == 0 and reading.stamp_ns > self._state_stamp:
            self._state_stamp = reading.stamp_ns  # one message per measurement: stamps strictly increase
            self.pub.publish("robot/state", RobotState(
                stamp_ns=reading.stamp_ns, q=reading.q, dq=reading.dq, ee_pose=self.kin.fk(reading.q),
                gripper_width=reading.gripper_width, mode=self.mode, safety_events=self.counters.total()))
        self._tick += 1

    def metrics(self) -> dict[str, float]:
        m = {f"safety.{k}": float(v) for k, v in self.counters.items()}
        m.update(schedules=float(self.schedules), stretched_segments=float(self.stretched),
                 driver_send_timeouts=float(getattr(self.driver, "send_timeouts", 0)))
        if hasattr(self.driver, "loop_stats"):
            m.update(self.driver.loop_stats())
        return m

    def shutdown(self) -> None:
        if hasattr(self, "driver"):
            self.driver.stop()
        if hasattr(self, "rx"):
            self.rx.close()
