"""Dynamixel bus (Protocol 2.0, X-series control table) through the official ``dynamixel-sdk``.

Used for leader arms: joint reading with one group sync read of Present Position per cycle,
torque off so the operator can move the arm, optional goal positions with a group sync write.
Every communication failure surfaces as :class:`DynamixelError` naming the servo and the SDK's
reason (no status packet = missing servo / timeout, corrupt status packet = bad CRC, hardware
error bits). Units: positions in rad, 4096 ticks per turn, 2048 ticks = 0 rad.
Source: ROBOTIS e-Manual, Protocol 2.0 and the X-series control table (addresses 64, 116, 132).
"""

from __future__ import annotations

import numpy as np

from robot_stack.drivers.servo_bus import SdkServoBus, ServoBusError

ADDR_TORQUE_ENABLE, ADDR_GOAL_POSITION, ADDR_PRESENT_POSITION = 64, 116, 132
TICKS_PER_REV, CENTER = 4096, 2048


class DynamixelError(ServoBusError):
    """The bus or a servo failed (the message names which and why)."""


def ticks_to_rad(ticks: np.ndarray) -> np.ndarray:
    return (np.asarray(ticks, np.float64) - CENTER) * (2 * np.pi / TICKS_PER_REV)


def rad_to_ticks(q: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(q, np.float64) * TICKS_PER_REV / (2 * np.pi) + CENTER).astype(np.int64)


class DynamixelBus(SdkServoBus):
    """A chain of servos on one serial port.

    Args:
        port: serial device (e.g. /dev/ttyUSB0).
        ids: servo ids, in joint order.
        baudrate: bus baud rate (one the SDK supports, e.g. 57600 or 1000000).
        latency_timer_ms: the SDK's reply-timeout margin (module-wide; default 16 ms as in the SDK).

    Raises:
        DynamixelError: the port cannot be opened, or a servo does not answer ping.
    """

    Error = DynamixelError
    NAME = "Dynamixel"
    ADDR_TORQUE_ENABLE, ADDR_GOAL, ADDR_PRESENT, WIDTH = (
        ADDR_TORQUE_ENABLE,
        ADDR_GOAL_POSITION,
        ADDR_PRESENT_POSITION,
        4,
    )

    def __init__(self, port: str, ids: list[int], baudrate: int = 1_000_000, latency_timer_ms: float | None = None):
        import dynamixel_sdk as sdk

        if latency_timer_ms is not None:  # the SDK's reply timeout margin (USB adapter latency timer)
            import dynamixel_sdk.port_handler as ph_mod

            ph_mod.LATENCY_TIMER = latency_timer_ms
        self._open(sdk, sdk.PacketHandler(2.0), port, ids, baudrate)

    def _decode(self, value: int) -> int:
        return value - (1 << 32) if value >= 1 << 31 else value  # 32-bit two's complement

    def _encode(self, ticks: int) -> list[int]:
        return list(int(ticks).to_bytes(4, "little", signed=True))

    def read_positions(self) -> np.ndarray:
        """Present positions (n,) rad."""
        return ticks_to_rad(self.read_ticks())

    def write_goal_positions(self, q: np.ndarray) -> None:
        """Goal positions (n,) rad with one sync write (no status replies)."""
        self.write_ticks(rad_to_ticks(q))
