"""Arm node: the servo loop, wiring the driver and the sockets to the servo core.

Every tick (``rate_hz``): read the driver; hand the lossless input's waypoint schedules, heartbeats
and arm-control messages to :class:`~robot_stack.control.servo.ServoCore` (checks, merge, holds,
e-stop, heartbeat staleness, servo guard: see there); command the driver with the core's output;
publish ``robot/state``.

Holds: when the schedule runs out (the trajectory holds its last point), when the schedule's
sender has sent no heartbeat for longer than ``safety.heartbeat_timeout_s`` (schedule dropped,
jerk-limited stop), and on e-stop (jerk-limited stop, then hold until a "release" from a source
in ``safety.estop_release``). At start-up the first command is the measured state, so the arm
never jumps. Any message that decodes but is wrong is refused with a named reason and a counter;
nothing unchecked reaches the driver.
"""

from __future__ import annotations

import logging

import numpy as np

from robot_stack.comm.messages import RobotState
from robot_stack.control.servo import ServoCore
from robot_stack.drivers.arm import ArmDriverError, usable_wrench
from robot_stack.nodes.arm_params import ArmParams
from robot_stack.runtime.clock import now_ns, sleep
from robot_stack.runtime.node import Node
from robot_stack.runtime.realtime import apply_realtime

__all__ = ["ArmNode", "ArmParams"]

log = logging.getLogger(__name__)


class ArmNode(Node):
    """Servo loop: the driver and the sockets around :class:`~robot_stack.control.servo.ServoCore`."""

    Params = ArmParams
    pub_hwm = 4000  # 8 s of states at 500 Hz per subscriber (a starved recorder loses none)

    @classmethod
    def publishes(cls, params) -> list[str]:
        return [RobotState.TOPIC]

    def configure(self) -> None:
        from robot_stack.control.collision import CollisionChecker
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
        first = self.driver.start(p.startup_timeout_s)
        self.own(self.driver, self.driver.stop)
        self.kin = self.model.kin
        n = self.driver.n_joints
        if n != self.model.n_joints:
            raise ValueError(
                f"robot model {self.model.name} has {self.model.n_joints} joints, the {p.driver.type} driver {n}"
            )
        # joint limits: the model's and the driver's, whichever is tighter
        lower = np.maximum(self.model.lower, self.driver.lower)
        upper = np.minimum(self.model.upper, self.driver.upper)
        # the setup's limits over the robot description's defaults, capped at its datasheet's
        s = p.safety.over(self.model.desc.safety).capped_by(self.model.max_vel, self.model.max_acc, self.model.name)
        release = (
            set(s.estop_release)
            if s.estop_release is not None
            else ({"cli_estop"} | {k for k, nc in self.ctx.config.nodes.items() if nc.kind == "teleop"})
        )
        grip0 = float(
            np.clip(first.gripper_width / self.model.gripper_stroke_m, 0, 1) if self.model.gripper_stroke_m > 0 else 0.0
        )
        coll = p.collision.over(self.model.desc.collision)  # the setup's scene over the robot's default
        checker = CollisionChecker(self.model, coll) if coll.enabled else None
        budget = p.check_budget / p.rate_hz
        # no jump at start-up: the first command is the measured state
        args = (self.kin, s, lower, upper, first.q.copy(), grip0, p.rate_hz, release, budget, p.max_pending)
        self.core = ServoCore(*args, p.ik_iters_per_tick, collision=checker)
        self.counters = self.core.counters
        self.own(self.core, self._stop_motion)  # runs before the driver's release (reverse order)
        self.rx = self.own(self.ctx.receiver())
        sub = lambda node: self.own(self.ctx.subscriber([node], (RobotState.TOPIC,), history=1))  # noqa: E731
        self.peers = {o.node: sub(o.node) for o in coll.arms} if checker is not None else {}  # other arms' states
        self._state_every = max(1, round(p.rate_hz / p.state_rate_hz))
        self._tick = 0
        self._state_stamp = -1
        log.info(
            "arm ready (%s) at q=%s; e-stop release allowed from %s",
            self.model.name,
            np.round(first.q, 3).tolist(),
            sorted(release),
        )

    @property
    def mode(self) -> str:
        """hold, track or estop (an e-stop or a driver fault)."""
        return self.core.mode

    # ------------------------------------------------------------------------------------ inputs
    def _inputs(self, t: int) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("arm_input", self._on_message, item[1], t)
        for node, peer in self.peers.items():  # where the other arms are (their measured joints)
            self.core.on_other_arm(node, peer.latest(RobotState.TOPIC), t)
        who = self.core.recover_requested_by
        if who is not None:
            self.core.recover_requested_by = None
            if not self.driver.can_recover:
                log.warning(
                    "recovery requested by %s: the %s driver recovers by itself or not at all",
                    who,
                    self.params.driver.type,
                )
            elif self.driver.recover():
                log.warning("driver recovery started by %s", who)

    def _on_message(self, msg, t: int) -> None:
        if not self.core.on_message(msg, t):
            self.input_rejections[f"arm_input.unexpected_{msg.SCHEMA}"] += 1
            log.warning("ignored %s from %s on the arm input", msg.SCHEMA, msg.source)

    # ------------------------------------------------------------------------------------- loop
    def step(self) -> None:
        t = now_ns()
        try:
            reading = self.driver.read()
        except ArmDriverError as e:  # a reflex or lost connection: the robot stopped; hold and report
            self.core.on_driver_fault(str(e))
            self._inputs(t)  # e-stops, heartbeats and recovery requests still count; schedules are refused
            return
        self.core.on_reading(reading.q)
        self._inputs(t)
        q, grip, dt = self.core.tick(t)
        if self.spy is not None:
            self.spy.tick_ns = t
        self.driver.set_step_period(dt)
        self.driver.command(q, grip)
        if self._tick % self._state_every == 0 and reading.stamp_ns > self._state_stamp:
            self._state_stamp = reading.stamp_ns  # one message per measurement: stamps strictly increase
            wrench = usable_wrench(reading.wrench)
            if wrench is None and reading.wrench is not None:  # never published: read as "none"
                self.counters["wrench_unusable"] += 1
            self.pub.publish(
                RobotState.TOPIC,
                RobotState(
                    stamp_ns=reading.stamp_ns,
                    q=reading.q,
                    dq=reading.dq,
                    ee_pose=self.kin.fk(reading.q),
                    gripper_width=reading.gripper_width,
                    mode=self.core.mode,
                    safety_events=self.counters.total(),
                    schedules_refused=self.core.schedules_refused,
                    wrench=wrench,
                    q_plan=self.core.planned_q(),
                ),
            )
        self._tick += 1

    def metrics(self) -> dict[str, float]:
        m = self.core.metrics()
        m["driver_send_timeouts"] = float(self.driver.send_timeouts)
        m.update(self.driver.loop_stats())
        return m

    #: longest jerk-limited stop run at shutdown before the driver is released, s
    STOP_ON_SHUTDOWN_S = 2.0

    def _stop_motion(self) -> None:
        """Bring a moving command to rest along the guard's jerk-limited stop before the driver is
        released (a stack stopping, or stopped because another node died, leaves the arm held, not
        cut off mid-motion)."""
        core = self.core
        if not core.guard.moving or core.driver_fault is not None:
            return
        deadline = now_ns() + int(self.STOP_ON_SHUTDOWN_S * 1e9)
        while now_ns() < deadline:
            sleep(core._dt)
            t = now_ns()
            out = core.stop_tick(t)
            if out is None:
                log.info("arm brought to rest before shutdown")
                return
            if self.spy is not None:
                self.spy.tick_ns = t
            try:
                self.driver.set_step_period(out[1])
                self.driver.command(out[0], core.grip_cmd)
            except Exception as e:  # the robot is gone: nothing left to stop
                log.error("stop at shutdown: %s", e)
                return
