"""Gamepad teleop through the Linux joystick API (``/dev/input/js*``; no extra library).

Each event is 8 bytes: ``u32 time_ms, s16 value, u8 type, u8 number`` (type 1 button, 2 axis,
0x80 init flag), per the kernel's Documentation/input/joydev/joystick-api.rst. Axes map, after a
dead zone, to a TCP velocity: left stick x/y, right stick z and yaw. Buttons: A toggles the
gripper, B start/stop episode, X discard, Y intervene/hand back.
"""

from __future__ import annotations

from typing import Literal
import os
import struct

from pydantic import Field
import numpy as np

from robot_stack.runtime.devices import Check, path_check
from robot_stack.comm.messages import TeleopCommand
from .base import TeleopConfig, TeleopDevice, TeleopError, TeleopInputs, axes_to_delta, deadzone

EVENT = struct.Struct("<IhBB")
JS_BUTTON, JS_AXIS, JS_INIT = 0x01, 0x02, 0x80
# joystick axis number -> our [vx vy vz wx wy wz] index and sign (Xbox layout on xpad)
AXIS_MAP = {1: (0, -1), 0: (1, -1), 4: (2, -1), 3: (5, -1)}


class GamepadState:
    """Axes (normalized to [-1, 1]) and button edges from a stream of joystick events."""

    def __init__(self):
        self.axes: dict[int, float] = {}
        self.pressed: list[int] = []

    def feed(self, data: bytes) -> None:
        """Apply raw event bytes (a multiple of 8)."""
        if len(data) % EVENT.size:
            raise TeleopError(f"joystick read of {len(data)} bytes is not a multiple of {EVENT.size}")
        for _, value, typ, number in EVENT.iter_unpack(data):
            if typ & JS_AXIS:
                self.axes[number] = value / 32767.0
            elif typ & JS_BUTTON and value and not typ & JS_INIT:
                self.pressed.append(number)


def gamepad_command(
    st: GamepadState,
    gripper: float,
    recording: bool,
    intervening: bool,
    period_s: float,
    dz: float = 0.15,
    max_lin_vel: float = 0.1,
    max_ang_vel: float = 0.5,
):
    """One period's command; consumes ``st.pressed``. Returns (command, gripper, recording, intervening)."""
    axes6 = np.zeros(6)
    for n, (i, sign) in AXIS_MAP.items():
        axes6[i] = sign * st.axes.get(n, 0.0)
    buttons = []
    for b in st.pressed:
        if b == 0:
            gripper = 0.0 if gripper > 0.5 else 1.0
        elif b == 1:
            buttons.append("episode_stop" if recording else "episode_start")
            recording = not recording
        elif b == 2:
            buttons.append("episode_discard")
            recording = False
        elif b == 3:
            buttons.append("release" if intervening else "intervene")
            intervening = not intervening
    st.pressed.clear()
    delta = axes_to_delta(deadzone(axes6, dz), period_s, max_lin_vel, max_ang_vel)
    return (
        TeleopCommand(kind="ee_delta", value=delta, gripper=gripper, buttons=buttons),
        gripper,
        recording,
        intervening,
    )


class GamepadDevice(TeleopDevice):
    """A joystick device file (default /dev/input/js0).

    Raises:
        TeleopError: the device cannot be opened or read.
    """

    def __init__(
        self,
        period_s: float,
        path: str = "/dev/input/js0",
        deadzone: float = 0.15,
        max_lin_vel: float = 0.1,
        max_ang_vel: float = 0.5,
    ):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise TeleopError(f"gamepad {path}: {e}") from e
        self.path, self.period_s, self.dz, self.lin, self.ang = path, period_s, deadzone, max_lin_vel, max_ang_vel
        self.state = GamepadState()
        self.gripper, self.recording, self.intervening = 1.0, False, False

    def poll(self, inputs: TeleopInputs | None = None) -> TeleopCommand | None:
        while True:
            try:
                data = os.read(self.fd, EVENT.size * 64)
            except BlockingIOError:
                break
            except OSError as e:
                raise TeleopError(f"gamepad {self.path} read failed (unplugged?): {e}") from e
            if not data:
                break
            self.state.feed(data)
        cmd, self.gripper, self.recording, self.intervening = gamepad_command(
            self.state, self.gripper, self.recording, self.intervening, self.period_s, self.dz, self.lin, self.ang
        )
        return cmd

    def close(self) -> None:
        os.close(self.fd)


class GamepadConfig(TeleopConfig):
    """teleop device ``gamepad``: a joystick device file (Linux joystick API)."""

    type: Literal["gamepad"] = "gamepad"
    path: str = Field("/dev/input/js0", description="joystick device file")
    deadzone: float = Field(0.1, ge=0, lt=1, description="dead zone (fraction of full scale)")
    max_lin_vel: float = Field(0.1, gt=0, description="m/s at full deflection")
    max_ang_vel: float = Field(0.5, gt=0, description="rad/s at full deflection")

    def doctor(self) -> list[Check]:
        return [path_check(f"gamepad {self.path}", self.path, "plug it in; ls /dev/input/js* lists joysticks")]

    def build(self, ctx, params) -> GamepadDevice:
        return GamepadDevice(1.0 / params.rate_hz, self.path, self.deadzone, self.max_lin_vel, self.max_ang_vel)
