"""3Dconnexion SpaceMouse teleop through ``pyspacemouse`` (HID; needs libhidapi).

Six axes map to a TCP velocity in the base frame (``axes_to_delta``) after a dead zone, so an idle
device that reads a few counts off zero never drifts the arm (default 0.1 of full scale). Left
button toggles the gripper; right button starts/stops an episode (press = toggle).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
import numpy as np

from robot_stack.runtime.devices import Check
from robot_stack.comm.messages import TeleopCommand
from .base import TeleopConfig, TeleopDevice, TeleopError, TeleopInputs, axes_to_delta, deadzone


def spacemouse_command(
    axes6: np.ndarray,
    buttons: list[int],
    prev_buttons: list[int],
    gripper: float,
    recording: bool,
    period_s: float,
    dz: float = 0.1,
    max_lin_vel: float = 0.1,
    max_ang_vel: float = 0.5,
) -> tuple[TeleopCommand, float, bool]:
    """One period's command from raw axes [x y z roll pitch yaw] in [-1, 1] and button states.

    Returns (command, gripper, recording). Buttons act on press (0 -> 1 edges).
    """
    delta = axes_to_delta(deadzone(axes6, dz), period_s, max_lin_vel, max_ang_vel)
    pressed = [i for i, b in enumerate(buttons) if b and not (i < len(prev_buttons) and prev_buttons[i])]
    events = []
    if 0 in pressed:
        gripper = 0.0 if gripper > 0.5 else 1.0
    if 1 in pressed:
        events.append("episode_stop" if recording else "episode_start")
        recording = not recording
    return TeleopCommand(kind="ee_delta", value=delta, gripper=gripper, buttons=events), gripper, recording


class SpaceMouseDevice(TeleopDevice):
    """A SpaceMouse opened with pyspacemouse (first device, or ``device`` by name).

    Raises:
        TeleopError: pyspacemouse or libhidapi missing, or no device connected.
    """

    def __init__(
        self,
        period_s: float,
        deadzone: float = 0.1,
        max_lin_vel: float = 0.1,
        max_ang_vel: float = 0.5,
        device: str | None = None,
    ):
        try:
            import pyspacemouse
        except Exception as e:  # ImportError, or OSError when libhidapi is missing
            raise TeleopError(f"SpaceMouse needs pyspacemouse and libhidapi (apt libhidapi-hidraw0): {e}") from e
        try:
            self.dev = pyspacemouse.open(device=device)
        except Exception as e:  # noqa: BLE001 - RuntimeError when none is connected
            raise TeleopError(f"no SpaceMouse found: {e}").with_fix(
                "plug it in; the user needs read access to /dev/hidraw* (a udev rule for vendor 256f or 046d)"
            ) from e
        if not self.dev:
            raise TeleopError("no SpaceMouse found (is it plugged in, and is /dev/hidraw* readable?)")
        self.period_s, self.dz, self.lin, self.ang = period_s, deadzone, max_lin_vel, max_ang_vel
        self.gripper, self.recording, self.prev = 1.0, False, []

    def poll(self, inputs: TeleopInputs | None = None) -> TeleopCommand | None:
        s = self.dev.read()
        buttons = list(s.buttons)
        cmd, self.gripper, self.recording = spacemouse_command(
            np.array([s.x, s.y, s.z, s.roll, s.pitch, s.yaw]),
            buttons,
            self.prev,
            self.gripper,
            self.recording,
            self.period_s,
            self.dz,
            self.lin,
            self.ang,
        )
        self.prev = buttons
        return cmd

    def close(self) -> None:
        self.dev.close()


class SpaceMouseConfig(TeleopConfig):
    """teleop device ``spacemouse``: a 3Dconnexion SpaceMouse (pyspacemouse, extra ``spacemouse``;
    needs libhidapi)."""

    type: Literal["spacemouse"] = "spacemouse"
    extra = "spacemouse"
    requires = ("pyspacemouse",)
    deadzone: float = Field(0.1, ge=0, lt=1, description="dead zone (fraction of full scale)")
    max_lin_vel: float = Field(0.1, gt=0, description="m/s at full deflection")
    max_ang_vel: float = Field(0.5, gt=0, description="rad/s at full deflection")

    def doctor(self) -> list[Check]:
        import glob
        import os

        nodes = sorted(glob.glob("/dev/hidraw*"))
        readable = [n for n in nodes if os.access(n, os.R_OK)]
        if not nodes:
            return [Check(False, "SpaceMouse", "no HID device (/dev/hidraw*) on this host", "plug it in")]
        if not readable:
            return [
                Check(
                    False,
                    "SpaceMouse",
                    f"{len(nodes)} HID devices, none readable by this user",
                    "add a udev rule for vendor 256f or 046d (read access to /dev/hidraw*)",
                )
            ]
        return [
            Check(
                True,
                "SpaceMouse",
                f"{len(readable)} readable HID devices (which one is the SpaceMouse shows when the node starts)",
                blocking=False,
            )
        ]

    def build(self, ctx, params) -> SpaceMouseDevice:
        return SpaceMouseDevice(1.0 / params.rate_hz, self.deadzone, self.max_lin_vel, self.max_ang_vel)
