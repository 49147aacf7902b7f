"""Teleop node: polls one teleop device at its rate and publishes ``teleop/command``.

Devices: ``keyboard`` (terminal), ``spacemouse``, ``gamepad``, ``scripted`` (the sim reach expert,
which also needs the arm's ``robot/state`` and the sim world's ``sim/objects``). Episode events on
the node's input (start/stop/reset) restart the scripted expert; a person's devices ignore them.
A device that fails to open stops the node with the device's error message.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from ..messages import EpisodeEvent
from ..node import Node, NodeParams

log = logging.getLogger(__name__)


class TeleopParams(NodeParams):
    device: Literal["keyboard", "spacemouse", "gamepad", "scripted"] = "keyboard"
    rate_hz: float = Field(30.0, gt=0, le=500)
    arm: str = "arm"
    sim_world: str = "sim"
    tty: str | None = Field(None, description="keyboard: terminal device (default: the launcher's)")
    path: str = Field("/dev/input/js0", description="gamepad device file")
    deadzone: float = Field(0.1, ge=0, lt=1, description="spacemouse/gamepad dead zone (fraction of full scale)")
    max_lin_vel: float = Field(0.1, gt=0, description="m/s at full deflection")
    max_ang_vel: float = Field(0.5, gt=0, description="rad/s at full deflection")
    speed: float = Field(0.15, gt=0, description="scripted expert speed, m/s")
    seed: int = 0


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
        if p.device == "scripted":
            from robot_stack.teleop.scripted import ReachExpert

            self.device = ReachExpert(speed=p.speed, seed=p.seed)
            self.sub = self.ctx.subscriber([p.arm, p.sim_world], ("robot/state", "sim/objects"))
            self.active = False  # acts between episode start and stop
        elif p.device == "keyboard":
            from robot_stack.teleop.keyboard import KeyboardDevice

            self.device = KeyboardDevice(p.tty)
        elif p.device == "spacemouse":
            from robot_stack.teleop.spacemouse import SpaceMouseDevice

            self.device = SpaceMouseDevice(period, p.deadzone, p.max_lin_vel, p.max_ang_vel)
        else:
            from robot_stack.teleop.gamepad import GamepadDevice

            self.device = GamepadDevice(period, p.path, p.deadzone, p.max_lin_vel, p.max_ang_vel)

    def step(self) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            if isinstance(item[1], EpisodeEvent) and self.params.device == "scripted":
                ev = item[1]
                self.active = ev.kind == "start"
                self.device.reset()
        if self.sub is not None:
            if not self.active:
                return
            st, obj = self.sub.latest("robot/state"), self.sub.latest("sim/objects")
            if st is None or obj is None:
                return
            cmd = self.device.step(np.asarray(st.ee_pose), np.asarray(obj.cube_pose[:3]), 1.0 / self.rate_hz)
        else:
            cmd = self.device.poll()
        if cmd is not None:
            self.pub.publish("teleop/command", cmd)
            self.sent += 1

    def metrics(self) -> dict[str, float]:
        return {"commands": float(self.sent), "active": float(self.active)}

    def shutdown(self) -> None:
        if hasattr(self, "device") and hasattr(self.device, "close"):
            self.device.close()
        for s in ("rx", "sub"):
            if getattr(self, s, None) is not None:
                getattr(self, s).close()
