"""What the serial servo buses (Dynamixel, Feetech) have in common.

Feetech's SDK follows the design of ROBOTIS's (``PortHandler``, ``PacketHandler``,
``GroupSyncRead``/``GroupSyncWrite``, ``COMM_SUCCESS`` result codes), so one class carries the
shared behaviour: opening the port, ping with a named failure, torque enable, a sync read of
present positions whose failure names the servos that stopped answering, a sync write of goal
positions, and flushing what is left of the replies after a failed transaction. Subclasses give
the SDK module, the control-table addresses and the byte encoding.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import time

import numpy as np


class ServoBusError(RobotStackError, RuntimeError):
    """A servo bus or one of its servos failed (the message names which and why)."""


class SdkServoBus:
    """A chain of servos on one serial port, through a ROBOTIS-style SDK.

    Subclasses set: ``Error`` (the exception), ``NAME`` (for messages), ``ADDR_TORQUE_ENABLE``,
    ``ADDR_GOAL``/``ADDR_PRESENT`` with ``WIDTH`` (bytes), and implement :meth:`_error_text`,
    :meth:`_decode` (raw register value -> signed ticks) and :meth:`_encode` (ticks -> bytes),
    and call :meth:`_open` from ``__init__``.
    """

    Error: type[ServoBusError] = ServoBusError
    NAME = "servo"
    ADDR_TORQUE_ENABLE = ADDR_GOAL = ADDR_PRESENT = WIDTH = 0

    def _open(self, sdk, packet_handler, port: str, ids: list[int], baudrate: int) -> None:
        self.sdk, self.ids, self.ph = sdk, list(ids), packet_handler
        self.port = sdk.PortHandler(port)
        try:
            ok = self.port.openPort() and self.port.setBaudRate(baudrate)
        except Exception as e:  # noqa: BLE001 - pyserial raises SerialException/OSError
            raise self.Error(f"cannot open {self.NAME} port {port}: {e}") from e
        if not ok:
            raise self.Error(f"cannot open {self.NAME} port {port} at {baudrate} baud")
        self.reader = sdk.GroupSyncRead(self.port, self.ph, self.ADDR_PRESENT, self.WIDTH)
        self.writer = sdk.GroupSyncWrite(self.port, self.ph, self.ADDR_GOAL, self.WIDTH)
        for i in self.ids:
            self.reader.addParam(i)
        self.models = {i: self.ping(i) for i in self.ids}

    def _error_text(self, err: int) -> str:
        return self.ph.getRxPacketError(err)

    def _decode(self, value: int) -> int:
        raise NotImplementedError

    def _encode(self, ticks: int) -> list[int]:
        raise NotImplementedError

    def _flush(self) -> None:
        """After a failed transaction: drop what is left of the replies (the rest of a sync read's
        status packets, a corrupt packet's tail) so the next transaction starts clean. (Feetech's
        ``clearPort()`` flushes the output, so the input buffer is reset here.)"""
        time.sleep(0.005)
        ser = getattr(self.port, "ser", None)
        if ser is not None:
            ser.reset_input_buffer()

    def _check(self, what: str, sid: int | None, comm: int, err: int = 0) -> None:
        if comm != self.sdk.COMM_SUCCESS:
            self._flush()
            who = f"servo {sid}" if sid is not None else "bus"
            raise self.Error(f"{what} on {who}: {self.ph.getTxRxResult(comm)}")
        if err:
            raise self.Error(f"{what}: servo {sid} reports {self._error_text(err)}")

    def ping(self, sid: int) -> int:
        """Model number of servo ``sid``."""
        model, comm, err = self.ph.ping(self.port, sid)
        if comm != self.sdk.COMM_SUCCESS:
            self._flush()
            raise self.Error(
                f"servo {sid} did not answer ping ({self.ph.getTxRxResult(comm)}): "
                "missing, wrong id, or wrong baud rate"
            )
        self._check("ping", sid, comm, err)
        return int(model)

    def set_torque(self, on: bool) -> None:
        for i in self.ids:
            comm, err = self.ph.write1ByteTxRx(self.port, i, self.ADDR_TORQUE_ENABLE, int(on))
            self._check("torque enable", i, comm, err)

    def read_ticks(self) -> np.ndarray:
        """Present positions (n,) int64 ticks, one sync read."""
        comm = self.reader.txRxPacket()
        if comm != self.sdk.COMM_SUCCESS:
            self._flush()
            silent = [i for i in self.ids if self.ph.ping(self.port, i)[1] != self.sdk.COMM_SUCCESS]
            who = f"servos {silent} do not answer" if silent else "every servo answers ping"
            raise self.Error(f"sync read of present position failed ({self.ph.getTxRxResult(comm)}); {who}")
        return np.array(
            [self._decode(self.reader.getData(i, self.ADDR_PRESENT, self.WIDTH)) for i in self.ids], np.int64
        )

    def write_ticks(self, ticks: np.ndarray) -> None:
        """Goal positions (n,) ticks with one sync write (no status replies)."""
        ticks = np.asarray(ticks, np.int64)
        if ticks.shape != (len(self.ids),):
            raise self.Error(f"{ticks.shape[0] if ticks.ndim else 0} goal positions for {len(self.ids)} servos")
        self.writer.clearParam()
        for i, t in zip(self.ids, ticks):
            self.writer.addParam(i, self._encode(int(t)))
        self._check("sync write of goal position", None, self.writer.txPacket())

    def close(self) -> None:
        self.port.closePort()
