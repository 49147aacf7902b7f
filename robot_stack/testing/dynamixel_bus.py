"""A fake Dynamixel Protocol 2.0 bus on a pseudo-terminal, for protocol-level tests.

The SDK opens the pty's slave path like any serial device; a thread reads instruction packets
from the master side and answers like X-series servos: PING (model number, firmware), READ,
WRITE, SYNC_READ (one status packet per servo, in ID order) and SYNC_WRITE (no reply), with
CRC-16 (polynomial 0x8005, CRC-16/BUYPASS) and byte stuffing (FF FF FD -> FF FF FD FD) as the
ROBOTIS Protocol 2.0 e-Manual specifies. Written from the protocol description, not from the SDK,
so the SDK's own parser checks our bytes. Faults: a servo can be missing (never answers), the bus
can corrupt CRCs, stop answering (timeout), or report a hardware error bit.
"""

from __future__ import annotations

import struct

from robot_stack.testing.pty_device import PtyDevice

HEADER = b"\xff\xff\xfd\x00"
PING, READ, WRITE, SYNC_READ, SYNC_WRITE, STATUS = 0x01, 0x02, 0x03, 0x82, 0x83, 0x55


def crc16(data: bytes) -> int:
    """CRC-16/BUYPASS (poly 0x8005, init 0, no reflection), as Protocol 2.0 uses."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD in the instruction/parameter field."""
    out = bytearray()
    for b in body:
        out.append(b)
        if len(out) >= 3 and out[-3:] == b"\xff\xff\xfd":
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if len(out) >= 3 and out[-3:] == b"\xff\xff\xfd" and i + 1 < len(body) and body[i + 1] == 0xFD:
            i += 1
        i += 1
    return bytes(out)


def packet(dxl_id: int, inst: int, params: bytes) -> bytes:
    body = stuff(bytes([inst]) + params)
    head = HEADER + bytes([dxl_id]) + struct.pack("<H", len(body) + 2)
    return head + body + struct.pack("<H", crc16(head + body))


class FakeDynamixelBus(PtyDevice):
    """Servos with a 256-byte control table each, behind a pty.

    Attributes:
        port: the slave path to open with the SDK.
        tables: id -> bytearray control table (X-series addresses: 64 torque enable, 116 goal
            position (4 B), 132 present position (4 B)).
        missing: ids that never answer; corrupt_crc / silent / hw_error: bus-wide faults.
    """

    MODEL = 1200  # XL330-M288

    def __init__(self, ids):
        super().__init__()
        self.tables = {i: bytearray(256) for i in ids}
        self.missing: set[int] = set()
        self.corrupt_crc = False
        self.hw_error = 0
        self.received: list[tuple[int, int, bytes]] = []
        self.start()

    def set_position(self, dxl_id: int, ticks: int) -> None:
        self.tables[dxl_id][132:136] = struct.pack("<i", ticks)

    def goal(self, dxl_id: int) -> int:
        return struct.unpack("<i", self.tables[dxl_id][116:120])[0]

    def _status(self, dxl_id: int, params: bytes = b"") -> bytes:
        p = packet(dxl_id, STATUS, bytes([self.hw_error]) + params)
        if self.corrupt_crc:
            p = p[:-1] + bytes([p[-1] ^ 0xFF])
        return p

    def _answer(self, dxl_id: int, inst: int, params: bytes) -> bytes:
        self.received.append((dxl_id, inst, params))
        out = b""
        if inst == SYNC_READ and dxl_id == 0xFE:
            addr, n = struct.unpack("<HH", params[:4])
            for i in params[4:]:
                if i in self.tables and i not in self.missing:
                    out += self._status(i, bytes(self.tables[i][addr : addr + n]))
                else:
                    break  # a missing servo breaks the chain: the ones after it wait for it
            return out
        if inst == SYNC_WRITE and dxl_id == 0xFE:
            addr, n = struct.unpack("<HH", params[:4])
            data = params[4:]
            for k in range(0, len(data), n + 1):
                i = data[k]
                if i in self.tables:
                    self.tables[i][addr : addr + n] = data[k + 1 : k + 1 + n]
            return b""
        if dxl_id not in self.tables or dxl_id in self.missing:
            return b""
        t = self.tables[dxl_id]
        if inst == PING:
            return self._status(dxl_id, struct.pack("<HB", self.MODEL, 52))
        if inst == READ:
            addr, n = struct.unpack("<HH", params[:4])
            return self._status(dxl_id, bytes(t[addr : addr + n]))
        if inst == WRITE:
            addr = struct.unpack("<H", params[:2])[0]
            t[addr : addr + len(params) - 2] = params[2:]
            return self._status(dxl_id)
        return b""

    def handle(self, data: bytes) -> tuple[bytes, bytes]:
        out = b""
        while True:
            k = data.find(HEADER)
            if k < 0 or len(data) < k + 7:
                return out, data
            n = struct.unpack("<H", data[k + 5 : k + 7])[0]
            if len(data) < k + 7 + n:
                return out, data
            pkt, data = data[k : k + 7 + n], data[k + 7 + n :]
            if struct.unpack("<H", pkt[-2:])[0] != crc16(pkt[:-2]):
                continue  # a servo ignores a packet with a bad CRC
            body = unstuff(pkt[7:-2])
            out += self._answer(pkt[4], body[0], body[1:])
