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

from robot_stack.drivers.servo_bus import ServoBusError

ADDR_TORQUE_ENABLE, ADDR_GOAL_POSITION, ADDR_PRESENT_POSITION = 64, 116, 132
TICKS_PER_REV, CENTER = 4096, 2048


class DynamixelError(ServoBusError):
    """The bus or a servo failed (the message names which and why)."""


def ticks_to_rad(ticks: np.ndarray) -> np.ndarray:
    return (np.asarray(ticks, np.float64) - CENTER) * (2 * np.pi / TICKS_PER_REV)


def rad_to_ticks(q: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(q, np.float64) * TICKS_PER_REV / (2 * np.pi) + CENTER).astype(np.int64)


class DynamixelBus:
    """A chain of servos on one serial port.

    Args:
        port: serial device (e.g. /dev/ttyUSB0).
        ids: servo ids, in joint order.
        baudrate: bus baud rate (one the SDK supports, e.g. 57600 or 1000000).
        latency_timer_ms: the SDK's reply-timeout margin (module-wide; default 16 ms as in the SDK).

    Raises:
        DynamixelError: the port cannot be opened, or a servo does not answer ping.
    """

    def __init__(self, port: str, ids: list[int], baudrate: int = 1_000_000, latency_timer_ms: float | None = None):
        import dynamixel_sdk as sdk

        if latency_timer_ms is not None:  # the SDK's reply timeout margin (USB adapter latency timer)
            import dynamixel_sdk.port_handler as ph_mod

            ph_mod.LATENCY_TIMER = latency_timer_ms

        self.sdk, self.ids = sdk, list(ids)
        self.port = sdk.PortHandler(port)
        self.ph = sdk.PacketHandler(2.0)
        try:
            ok = self.port.openPort() and self.port.setBaudRate(baudrate)
        except Exception as e:  # noqa: BLE001 - pyserial raises SerialException/OSError
            raise DynamixelError(f"cannot open Dynamixel port {port}: {e}") from e
        if not ok:
            raise DynamixelError(f"cannot open Dynamixel port {port} at {baudrate} baud")
        self.reader = sdk.GroupSyncRead(self.port, self.ph, ADDR_PRESENT_POSITION, 4)
        self.writer = sdk.GroupSyncWrite(self.port, self.ph, ADDR_GOAL_POSITION, 4)
        for i in self.ids:
            self.reader.addParam(i)
        self.models = {i: self.ping(i) for i in self.ids}

    def _check(self, what: str, dxl_id: int | None, comm: int, err: int = 0) -> None:
        if comm != self.sdk.COMM_SUCCESS:
            who = f"servo {dxl_id}" if dxl_id is not None else "bus"
            raise DynamixelError(f"{what} on {who}: {self.ph.getTxRxResult(comm)}")
        if err:
            raise DynamixelError(f"{what}: servo {dxl_id} reports {self.ph.getRxPacketError(err)}")

    def ping(self, dxl_id: int) -> int:
        """Model number of ``dxl_id``."""
        model, comm, err = self.ph.ping(self.port, dxl_id)
        if comm != self.sdk.COMM_SUCCESS:
            raise DynamixelError(f"servo {dxl_id} did not answer ping ({self.ph.getTxRxResult(comm)}): "
                                 "missing, wrong id, or wrong baud rate")
        self._check("ping", dxl_id, comm, err)
        return int(model)

    def set_torque(self, on: bool) -> None:
        for i in self.ids:
            comm, err = self.ph.write1ByteTxRx(self.port, i, ADDR_TORQUE_ENABLE, int(on))
            self._check("torque enable", i, comm, err)

    def read_ticks(self) -> np.ndarray:
        """Present positions (n,) int64 ticks, one sync read."""
        comm = self.reader.txRxPacket()
        if comm != self.sdk.COMM_SUCCESS:
            silent = []
            for i in self.ids:  # find who is not answering, for the message
                if self.ph.ping(self.port, i)[1] != self.sdk.COMM_SUCCESS:
                    silent.append(i)
            who = f"servos {silent} do not answer" if silent else "every servo answers ping"
            raise DynamixelError(f"sync read of present position failed ({self.ph.getTxRxResult(comm)}); {who}")
        out = [self.reader.getData(i, ADDR_PRESENT_POSITION, 4) for i in self.ids]
        return np.array([v - (1 << 32) if v >= 1 << 31 else v for v in out], np.int64)

    def read_positions(self) -> np.ndarray:
        """Present positions (n,) rad."""
        return ticks_to_rad(self.read_ticks())

    def write_goal_positions(self, q: np.ndarray) -> None:
        """Goal positions (n,) rad with one sync write (no status replies)."""
        ticks = rad_to_ticks(q)
        if ticks.shape != (len(self.ids),):
            raise DynamixelError(f"{ticks.shape[0]} goal positions for {len(self.ids)} servos")
        self.writer.clearParam()
        for i, t in zip(self.ids, ticks):
            self.writer.addParam(i, list(int(t).to_bytes(4, "little", signed=True)))
        self._check("sync write of goal position", None, self.writer.txPacket())

    def close(self) -> None:
        self.port.closePort()
