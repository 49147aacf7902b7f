"""Keyboard teleop from a terminal (works over SSH: it reads the tty, needs no X11).

The launcher passes its terminal to nodes as ``ROBOT_STACK_TTY`` (nodes run in their own session
with no stdin); the device opens it in cbreak mode (Ctrl-C still reaches the launcher) and restores
it on close. Each key press moves the TCP target by one step; the terminal's auto-repeat gives
continuous motion while a key is held.

Keys: w/s +x/-x, a/d +y/-y, r/f +z/-z, j/l yaw +/-, g toggle gripper, b start episode,
n stop and save, x discard, i intervene (take over from the policy), o hand back, space e-stop,
Q quit, Tab switch arm (a teleop node with ``arms``: the next arm).
"""

from __future__ import annotations

from typing import Literal
import os
import select
import termios
import tty

from pydantic import Field
import numpy as np

from robot_stack.comm.messages import TeleopCommand
from .base import TeleopConfig, TeleopDevice, TeleopError, TeleopInputs

MOVES = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1), "j": (5, 1), "l": (5, -1)}
BUTTONS = {
    "b": "episode_start",
    "n": "episode_stop",
    "x": "episode_discard",
    "i": "intervene",
    "o": "release",
    " ": "estop",
    "E": "estop_release",
    "Q": "quit",
    "\t": "switch_arm",
}


def keys_to_command(
    keys: str, gripper: float, step_m: float = 0.005, step_rad: float = 0.03
) -> tuple[TeleopCommand | None, float]:
    """Map the keys typed in one period to a command; returns (command or None if no key, gripper).

    Unknown keys are ignored. The delta is [dx dy dz rx ry rz] (m, rad) in the base frame.
    """
    if not keys:
        return None, gripper
    delta = np.zeros(6)
    buttons: list[str] = []
    for k in keys:
        if k in MOVES:
            axis, sign = MOVES[k]
            delta[axis] += sign * (step_rad if axis >= 3 else step_m)
        elif k == "g":
            gripper = 0.0 if gripper > 0.5 else 1.0
        elif k in BUTTONS and BUTTONS[k] not in buttons:
            buttons.append(BUTTONS[k])
    return TeleopCommand(kind="ee_delta", value=delta, gripper=gripper, buttons=buttons), gripper


class KeyboardDevice(TeleopDevice):
    """Terminal keyboard.

    Args:
        tty_path: terminal device; default ``$ROBOT_STACK_TTY`` (set by the launcher) or /dev/tty.
        step_m, step_rad: motion per key press.

    Raises:
        TeleopError: no terminal to read (e.g. started without one, as in CI).
    """

    def __init__(self, tty_path: str | None = None, step_m: float = 0.005, step_rad: float = 0.03):
        path = tty_path or os.environ.get("ROBOT_STACK_TTY") or "/dev/tty"
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise TeleopError(
                f"keyboard teleop cannot open terminal {path}: {e} (run the stack from a terminal, or set params.tty)"
            ) from e
        self._saved = None
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # keys arrive at once, no echo; ISIG kept so Ctrl-C still works
        self.step_m, self.step_rad = step_m, step_rad
        self.gripper = 1.0

    def poll(self, inputs: TeleopInputs | None = None) -> TeleopCommand | None:
        keys = b""
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 64)
            except BlockingIOError:
                break
            if not chunk:
                break
            keys += chunk
        cmd, self.gripper = keys_to_command(keys.decode(errors="ignore"), self.gripper, self.step_m, self.step_rad)
        return cmd

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        os.close(self.fd)


class KeyboardConfig(TeleopConfig):
    """teleop device ``keyboard``: key presses on a terminal (works over SSH)."""

    type: Literal["keyboard"] = "keyboard"
    tty: str | None = Field(None, description="terminal device (default: the launcher's)")

    def build(self, ctx, params) -> KeyboardDevice:
        return KeyboardDevice(self.tty)
