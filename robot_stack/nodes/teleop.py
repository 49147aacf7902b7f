"""Teleop node: polls one teleop device at its rate and publishes ``teleop/command``.

Devices (``device: {type: ..., its keys}``, registry ``robot_stack.runtime.devices.TELEOP_DEVICES``):
``keyboard`` (terminal), ``spacemouse``, ``gamepad``, ``scripted`` (the sim reach expert,
which also needs the arm's ``robot/state`` and the sim world's ``sim/objects``), ``leader`` (a
Dynamixel leader arm: joint commands, engaged only when it matches the follower's pose, then
ramped in). Each device's config names the streams it reads; episode events on the node's input
(start/stop/discard) reach the device (the scripted expert acts between start and stop; a
person's devices ignore them).
Two arms (a controller with ``arms``): the node's ``arms`` lists the arm nodes; a person's one
device drives one of them at a time and its ``switch_arm`` button (keyboard: Tab) passes it to the
next; the node stamps each command with the arm it moves (``TeleopCommand.arm``). The arm not
being driven holds its target: the controller keeps a target per arm. A device that addresses the
arms itself (the scripted bimanual expert: one command per arm each period) sets ``arm`` and the
node leaves it. E-stop buttons go to every arm.
A device that fails to open stops the node with the device's error message. The e-stop button
goes straight to the arm node (not through the controller, which may be the part that hung), and
so does ``estop_release`` (honoured only where the arm's ``safety.estop_release`` allows this node,
as it does by default).
"""

from __future__ import annotations

import logging

from pydantic import Field

from robot_stack.comm.messages import EpisodeEvent, TeleopCommand
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import TELEOP_DEVICES
from robot_stack.runtime.node import Node, NodeParams
from robot_stack.teleop.base import ArmSelector, TeleopInputs

log = logging.getLogger(__name__)


#: a typed device config from the family's registry (a bare type name is short for {type: ...})
TeleopDeviceConfig, _device_field = TELEOP_DEVICES.field("keyboard")


class TeleopParams(NodeParams):
    device: TeleopDeviceConfig = _device_field
    rate_hz: float = Field(30.0, gt=0, le=500, description="device polling rate, Hz")
    arm: str = Field("arm", description="arm node (e-stop buttons; the state a device reads)")
    arms: list[str] = Field(
        default_factory=list,
        description="several arms: the arm nodes, in the controller's "
        "order; one device is switched between them (switch_arm button)",
    )

    @property
    def arm_nodes(self) -> list[str]:
        """The arm nodes this node's commands and e-stop buttons are for."""
        return list(self.arms) or [self.arm]

    def references(self) -> dict[str, str]:
        refs = self.device.references()
        refs.update({a: "arm" for a in self.arms})
        refs.update({node: kind for node, (kind, _) in self.device.inputs(self).items()})
        return refs


class TeleopNode(Node):
    """Polls one teleop device at ``rate_hz`` and publishes its commands on ``teleop/command``.

    The node knows no device: the device's config names the streams it reads
    (:meth:`TeleopConfig.inputs`), the node subscribes to them and hands the newest samples to
    ``poll``; episode events reach the device through ``on_episode``. E-stop buttons go straight to
    the arm node.
    """

    Params = TeleopParams

    @classmethod
    def publishes(cls, params) -> list[str]:
        return [TeleopCommand.TOPIC]

    default_rate_hz = 30.0

    def configure(self) -> None:
        p = self.params
        self.rx = self.own(self.ctx.receiver())
        self.sent = 0
        self.selector = ArmSelector(p.arms)  # several arms: the arm a person's device drives now
        self.arm_tx: dict = {}
        self.own(self.arm_tx, lambda: [tx.close() for tx in self.arm_tx.values()])
        self.device = self.own(p.device.build(self.ctx, p))
        ins = p.device.inputs(p)
        self.sub = None
        if ins:
            topics = tuple(sorted({t for _, ts in ins.values() for t in ts}))
            # a topic from several nodes (two arms' robot/state): enough history for the newest of each
            shared = len(topics) < sum(len(ts) for _, ts in ins.values())
            self.sub = self.own(self.ctx.subscriber(list(ins), topics, history=64 if shared else 1))

    def _latest(self, topic: str):
        return None if self.sub is None else self.sub.latest(topic)

    def _latest_from(self, node: str, topic: str):
        if self.sub is None:
            return None
        return next((m for m in reversed(self.sub.history(topic)) if m.source == node), None)

    def step(self) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("teleop_input", self._on_event, item[1])
        out = self.device.poll(TeleopInputs(self._latest, now_ns() / 1e9, 1.0 / self.rate_hz, self._latest_from))
        for cmd in [] if out is None else out if isinstance(out, list) else [out]:
            before = self.selector.current
            self.selector.route(cmd)
            if self.selector.current != before:
                log.info("teleop now drives arm %s", self.selector.current)
            self._arm_buttons(cmd.buttons)
            self.pub.publish(TeleopCommand.TOPIC, cmd)
            self.sent += 1

    def _on_event(self, ev) -> None:
        if isinstance(ev, EpisodeEvent):
            self.device.on_episode(ev.kind)

    def _arm_buttons(self, buttons) -> None:
        """E-stop (and its release) go to the arm nodes directly (every arm of the node)."""
        wanted = [b for b in buttons if b in ("estop", "estop_release")]
        for arm in self.params.arm_nodes:
            if not wanted or arm not in self.ctx.config.nodes:
                continue
            if arm not in self.arm_tx:
                self.arm_tx[arm] = self.ctx.arm_client(arm, heartbeat_hz=0)
            for b in wanted:
                try:
                    if b == "estop":
                        self.arm_tx[arm].estop(f"e-stop button on {self.name}")
                        log.warning("e-stop sent to %s", arm)
                    else:
                        self.arm_tx[arm].release()
                        log.warning("e-stop release sent to %s", arm)
                except Exception as e:  # the arm is gone or busy: say so, the button is not lost silently
                    log.error("could not send %s to %s: %s", b, arm, e)

    def metrics(self) -> dict[str, float]:
        return {"commands": float(self.sent), "selected_arm": float(self.selector.index), **self.device.metrics()}
