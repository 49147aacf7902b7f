"""Feetech STS-series bus (STS3215: SO-100 / SO-101 arms) through Feetech's ``feetech-servo-sdk``.

Same surface as :class:`~robot_stack.drivers.dynamixel.DynamixelBus` (leader arms and followers):
one group sync read of Present Position per cycle, torque enable per servo, goal positions with
one group sync write. Every failure surfaces as :class:`FeetechError` naming the servo and why (no
status packet = missing servo / timeout; bad checksum = corrupt status packet; the status packet's
error byte: voltage, angle, overheat, overcurrent, overload).

Protocol (Feetech SCS/STS communication protocol manual; the SDK's ``scservo_def`` /
``protocol_packet_handler``): instruction packet ``FF FF ID LEN INST PARAM... CHK``, status packet
``FF FF ID LEN ERR PARAM... CHK``, LEN = parameters + 2, CHK = ~(ID + LEN + INST/ERR + params) & 0xFF;
PING 0x01, READ 0x02, WRITE 0x03, SYNC_READ 0x82 (one status packet per servo, in the order
asked), SYNC_WRITE 0x83 (no reply), broadcast id 0xFE. STS words are little-endian (the SDK's
``protocol_end`` 0). STS3215 memory table: model number 3 (2 B), torque enable 40, goal position
42 (2 B), present position 56 (2 B, bit 15 = sign); 4096 ticks per turn, 2048 = 0 rad.
"""

from __future__ import annotations

import numpy as np

from robot_stack.drivers.servo_bus import SdkServoBus, ServoBusError

ADDR_MODEL, ADDR_TORQUE_ENABLE, ADDR_GOAL_POSITION, ADDR_PRESENT_POSITION = 3, 40, 42, 56
TICKS_PER_REV, CENTER = 4096, 2048
STS3215_MODEL = 777  # model number the STS3215 reports at address 3
ERROR_BITS = {0x01: "input voltage", 0x02: "angle limit", 0x04: "overheating", 0x08: "overcurrent", 0x20: "overload"}


class FeetechError(ServoBusError):
    """The bus or a servo failed (the message names which and why)."""


def ticks_to_rad(ticks: np.ndarray) -> np.ndarray:
    return (np.asarray(ticks, np.float64) - CENTER) * (2 * np.pi / TICKS_PER_REV)


def rad_to_ticks(q: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(q, np.float64) * TICKS_PER_REV / (2 * np.pi) + CENTER).astype(np.int64)


def decode_error(err: int) -> str:
    """Names of the error bits set in a status packet's error byte."""
    names = [n for b, n in ERROR_BITS.items() if err & b]
    return ", ".join(names) if names else f"error byte 0x{err:02x}"


class FeetechBus(SdkServoBus):
    """A chain of STS servos on one serial port.

    Args:
        port: serial device (e.g. /dev/ttyACM0 for the SO-101's Waveshare board).
        ids: servo ids, in joint order.
        baudrate: bus baud rate (STS default 1 000 000).
        latency_timer_ms: the SDK's reply-timeout margin (module-wide; SDK default 16 ms).

    Raises:
        FeetechError: the port cannot be opened, or a servo does not answer ping.
    """

    Error = FeetechError
    NAME = "Feetech"
    ADDR_TORQUE_ENABLE, ADDR_GOAL, ADDR_PRESENT, WIDTH = (
        ADDR_TORQUE_ENABLE,
        ADDR_GOAL_POSITION,
        ADDR_PRESENT_POSITION,
        2,
    )

    def __init__(self, port: str, ids: list[int], baudrate: int = 1_000_000, latency_timer_ms: float | None = None):
        import scservo_sdk as sdk

        if latency_timer_ms is not None:
            import scservo_sdk.port_handler as ph_mod

            ph_mod.LATENCY_TIMER = latency_timer_ms
        self._open(sdk, sdk.PacketHandler(0), port, ids, baudrate)  # PacketHandler(0): STS little-endian words

    def _error_text(self, err: int) -> str:
        return decode_error(err)

    def _decode(self, value: int) -> int:
        return -(value & 0x7FFF) if value & 0x8000 else value  # bit 15: sign

    def _encode(self, ticks: int) -> list[int]:
        return [ticks & 0xFF, (ticks >> 8) & 0xFF]

    def read_positions(self) -> np.ndarray:
        """Present positions (n,) rad."""
        return ticks_to_rad(self.read_ticks())

    def write_goal_positions(self, q: np.ndarray) -> None:
        """Goal positions (n,) rad with one sync write (no status replies).

        Raises:
            FeetechError: wrong count, or a goal outside 0..4095 ticks (one turn around 0 rad).
        """
        ticks = rad_to_ticks(q)
        if ticks.shape == (len(self.ids),) and (np.any(ticks < 0) or np.any(ticks >= TICKS_PER_REV)):
            raise FeetechError(
                f"goal positions {np.round(np.asarray(q, float), 3).tolist()} rad leave the servos' "
                f"single turn (-pi..pi)"
            )
        self.write_ticks(ticks)
