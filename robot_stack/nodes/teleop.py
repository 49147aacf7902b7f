"""Teleop node: polls one teleop device at its rate and publishes ``teleop/command``.

Devices (``device: {type: ..., its keys}``, registry ``robot_stack.runtime.devices.TELEOP_DEVICES``):
``keyboard`` (terminal), ``spacemouse``, ``gamepad``, ``scripted`` (the sim reach expert,
which also needs the arm's ``robot/state`` and the sim world's ``sim/objects``), ``leader`` (a
Dynamixel leader arm: joint commands, engaged only when it matches the follower's pose, then
ramped in). Episode events on
the node's input (start/stop/reset) restart the scripted expert; a person's devices ignore them.
A device that fails to open stops the node with the device's error message. The e-stop button
goes straight to the arm node (not through the controller, which may be the part that hung), and
so does ``estop_release`` (honoured only where the arm's ``safety.estop_release`` allows this node,
as it does by default).
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import Field

from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import TELEOP_DEVICES
from robot_stack.comm.messages import EpisodeEvent, RobotState, TeleopCommand
from robot_stack.runtime.node import Node, NodeParams
from robot_stack.drivers.sim_messages import ObjectState

log = logging.getLogger(__name__)


#: a typed device config from the family's registry (a bare type name is short for {type: ...})
TeleopDeviceConfig, _device_field = TELEOP_DEVICES.field("keyboard")


class TeleopParams(NodeParams):
    device: TeleopDeviceConfig = _device_field
    rate_hz: float = Field(30.0, gt=0, le=500)
    arm: str = Field("arm", description="arm node (e-stop buttons; the leader's engage check)")

    def references(self) -> dict[str, str]:
        refs = self.device.references()
        if self.device.type == "leader":
            refs[self.arm] = "arm"
        return refs


class TeleopNode(Node):
    Params = TeleopParams
    default_rate_hz = 30.0

    def configure(self) -> None:
        p = self.params
        period = 1.0 / p.rate_hz
        self.rx = self.ctx.receiver()
        self.sub = None
        self.active = True
        self.sent = 0
        self.kind = p.device.type
        self.device = p.device.build(self.ctx, p)
        if self.kind == "scripted":  # the sim task's expert reads the TCP and the sim's objects
            self.sub = self.ctx.subscriber([p.arm, p.device.world], (RobotState.TOPIC, ObjectState.TOPIC))
            self.active = False  # acts between episode start and stop
        elif self.kind == "leader":
            from robot_stack.teleop.leader import LeaderArm, load_joint_map

            self.jmap = load_joint_map(p.device.calibration, p.device.name)
            self.leader = LeaderArm(p.device.max_engage_error, p.device.ramp_s)
            self.sub = self.ctx.subscriber([p.arm], (RobotState.TOPIC,))
            self.refusals = 0
            self.bus_errors = self.bus_errors_run = 0

    def _leader_step(self) -> None:
        from robot_stack.drivers.dynamixel import DynamixelError
        from robot_stack.teleop.base import TeleopError

        try:
            raw = self.device.read_positions()
        except DynamixelError as e:  # one failed read skips a cycle; a failing bus disengages
            self.bus_errors += 1
            self.bus_errors_run += 1
            if self.bus_errors_run == 1 or self.bus_errors_run % 50 == 0:
                log.warning("leader read failed (%d in a row): %s", self.bus_errors_run, e)
            if self.bus_errors_run >= max(3, int(0.5 * self.rate_hz)) and self.leader.engaged:
                self.leader.disengage()
                log.error("leader bus failing for 0.5 s: disengaged (match the follower's pose to re-engage)")
            return
        self.bus_errors_run = 0
        n = len(self.params.device.ids)
        q = self.jmap.joints(raw[:n])
        g = self.jmap.gripper(raw[n]) if self.params.device.gripper_id is not None else 1.0
        t = now_ns() / 1e9
        if not self.leader.engaged:
            st = self.sub.latest(RobotState.TOPIC)
            if st is None:
                return
            try:
                self.leader.engage(q, np.asarray(st.q), t)
                log.info("leader engaged; ramping in over %.1f s", self.params.device.ramp_s)
            except TeleopError as e:
                self.refusals += 1
                if self.refusals == 1 or self.refusals % int(5 * self.rate_hz) == 0:
                    log.warning("%s", e)
                return
        self.pub.publish(TeleopCommand.TOPIC, self.leader.command(q, g, t))
        self.sent += 1

    def step(self) -> None:
        if self.kind == "leader":
            self._leader_step()
            return
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("teleop_input", self._on_event, item[1])
        if self.sub is not None:
            if not self.active:
                return
            st, obj = self.sub.latest(RobotState.TOPIC), self.sub.latest(ObjectState.TOPIC)
            if st is None or obj is None:
                return
            cmd = self.device.step(np.asarray(st.ee_pose), np.asarray(obj.cube_pose[:3]), 1.0 / self.rate_hz)
        else:
            cmd = self.device.poll()
        if cmd is not None:
            self._arm_buttons(cmd.buttons)
            self.pub.publish(TeleopCommand.TOPIC, cmd)
            self.sent += 1

    def _on_event(self, ev) -> None:
        if isinstance(ev, EpisodeEvent) and self.kind == "scripted":
            self.active = ev.kind == "start"
            self.device.reset()

    def _arm_buttons(self, buttons) -> None:
        """E-stop (and its release) go to the arm node directly."""
        wanted = [b for b in buttons if b in ("estop", "estop_release")]
        if not wanted or self.params.arm not in self.ctx.config.nodes:
            return
        if getattr(self, "arm_tx", None) is None:
            self.arm_tx = self.ctx.arm_client(self.params.arm, heartbeat_hz=0)
        for b in wanted:
            try:
                if b == "estop":
                    self.arm_tx.estop(f"e-stop button on {self.name}")
                    log.warning("e-stop sent to %s", self.params.arm)
                else:
                    self.arm_tx.release()
                    log.warning("e-stop release sent to %s", self.params.arm)
            except Exception as e:  # the arm is gone or busy: say so, the button is not lost silently
                log.error("could not send %s to %s: %s", b, self.params.arm, e)

    def metrics(self) -> dict[str, float]:
        m = {"commands": float(self.sent), "active": float(self.active)}
        if hasattr(self, "leader"):
            m.update(engaged=float(self.leader.engaged), engage_refusals=float(self.refusals),
                     bus_errors=float(self.bus_errors))
        return m

    def shutdown(self) -> None:
        if hasattr(self, "device") and hasattr(self.device, "close"):
            self.device.close()
        for s in ("rx", "sub", "arm_tx"):
            if getattr(self, s, None) is not None:
                getattr(self, s).close()
