"""A fake Robotiq 2F-85 on a pseudo-terminal: Modbus RTU as the 2F-85 manual (section 4) gives it.

A thread reads request frames from the pty's master side and answers as the gripper does:
function 16 (preset multiple registers) at 0x03E8 sets the action request, position, speed and
force; function 3 (read holding registers) at 0x07D0 returns the status bytes. Frames carry the
Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF, low byte first). Written from the manual, not
from minimalmodbus, so the library's own parser checks our bytes, and every request frame is kept
for byte-exact checks against the manual's example frames. The fingers move at a fixed rate;
an object can be placed between them (they stop on it: gOBJ 2); a fault code can be injected.
"""

from __future__ import annotations

import struct
import time

from robot_stack.testing.pty_device import PtyDevice


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16_modbus(body))


class FakeRobotiq(PtyDevice):
    """The gripper: position 0 (open) .. 255 (closed), ``object_at``: a position the fingers stop at."""

    read_size = 256

    def __init__(self, slave_id: int = 9, activation_s: float = 0.2, steps_per_s: float = 600.0):
        super().__init__()
        self.id, self.activation_s, self.rate = slave_id, activation_s, steps_per_s
        self.out = bytearray(6)  # the robot output registers (commands) as bytes
        self.pos = 0.0
        self.object_at: int | None = None
        self.fault = 0
        self.activated_at: float | None = None
        self.requests: list[bytes] = []
        self._t = time.monotonic()
        self.start()

    # ------------------------------------------------------------------ the gripper
    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._t = now - self._t, now
        if self.activated and self.out[0] & 0x08:
            target = self.out[3]
            stop = target if self.object_at is None or target < self.object_at else self.object_at
            step = self.rate * dt
            self.pos = min(self.pos + step, stop) if self.pos < stop else max(self.pos - step, stop)

    @property
    def activated(self) -> bool:
        return (
            (self.out[0] & 0x01)
            and self.activated_at is not None
            and time.monotonic() - self.activated_at >= self.activation_s
        )

    def status_bytes(self) -> bytes:
        self._advance()
        act = self.out[0] & 0x01
        sta = 3 if self.activated else (1 if act else 0)
        obj = 0
        if self.activated and self.out[0] & 0x08:
            target = self.out[3]
            if self.object_at is not None and target > self.object_at and abs(self.pos - self.object_at) < 1e-9:
                obj = 2  # stopped on an object while closing
            elif abs(self.pos - target) < 1e-9:
                obj = 3
        b0 = act | (self.out[0] & 0x08) | (sta << 4) | (obj << 6)
        return bytes([b0, 0, self.fault, self.out[3], int(round(self.pos)), 0])

    # ------------------------------------------------------------------ Modbus RTU
    def _answer(self, frame: bytes) -> bytes | None:
        if len(frame) < 4 or struct.unpack("<H", frame[-2:])[0] != crc16_modbus(frame[:-2]) or frame[0] != self.id:
            return None  # a bad CRC or another slave: no answer (the master times out)
        fc = frame[1]
        if fc == 16:
            addr, n, nbytes = struct.unpack(">HHB", frame[2:7])
            data = frame[7 : 7 + nbytes]
            if addr != 0x03E8 or n != 3 or nbytes != 6:
                return with_crc(bytes([self.id, 0x90, 0x02]))  # illegal data address
            was_active = self.out[0] & 0x01
            self.out[:] = data
            if data[0] & 0x01 and not was_active:
                self.activated_at = time.monotonic()
            if not data[0] & 0x01:
                self.activated_at = None
            return with_crc(frame[:6])
        if fc in (3, 4):
            addr, n = struct.unpack(">HH", frame[2:6])
            if addr != 0x07D0 or not 1 <= n <= 3:
                return with_crc(bytes([self.id, 0x80 | fc, 0x02]))
            st = self.status_bytes()[: 2 * n]
            return with_crc(bytes([self.id, fc, len(st)]) + st)
        return with_crc(bytes([self.id, 0x80 | fc, 0x01]))  # illegal function

    def _frame_len(self, buf: bytes) -> int | None:
        if len(buf) < 2:
            return None
        fc = buf[1]
        if fc == 16:
            return 9 + buf[6] if len(buf) >= 7 else None
        return 8

    def handle(self, data: bytes) -> tuple[bytes, bytes]:
        out = b""
        while (n := self._frame_len(data)) is not None and len(data) >= n:
            frame, data = data[:n], data[n:]
            self.requests.append(frame)
            out += self._answer(frame) or b""
        return out, data
