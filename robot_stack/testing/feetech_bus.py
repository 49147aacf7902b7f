"""A fake Feetech STS bus on a pseudo-terminal, for protocol-level tests.

The SDK opens the pty's slave path like any serial device; a thread reads instruction packets from
the master side and answers like STS3215 servos: PING, READ, WRITE (status packet each),
SYNC_READ (one status packet per servo, in the order asked) and SYNC_WRITE (no reply). Packets as
the Feetech SCS/STS protocol manual gives them: ``FF FF ID LEN INST PARAM... CHK``, LEN =
params + 2, CHK = ~(ID + LEN + INST + params) & 0xFF; status ``FF FF ID LEN ERR PARAM... CHK``.
Written from the protocol description, not from the SDK, so the SDK's own parser checks our bytes.
Faults: a missing servo (never answers), corrupt checksums, a silent bus, an error byte.
"""

from __future__ import annotations

import struct

from robot_stack.testing.pty_device import PtyDevice

PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
BROADCAST = 0xFE


def checksum(body: bytes) -> int:
    """~(ID + LEN + INST/ERR + params) & 0xFF over the bytes after the FF FF header."""
    return ~sum(body) & 0xFF


def packet(sid: int, inst_or_err: int, params: bytes = b"") -> bytes:
    body = bytes([sid, len(params) + 2, inst_or_err]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


class FakeFeetechBus(PtyDevice):
    """STS3215 servos with a 256-byte memory table each, behind a pty.

    Attributes:
        port: the slave path to open with the SDK.
        tables: id -> bytearray (3 model number (2 B), 40 torque enable, 42 goal position (2 B),
            56 present position (2 B)); words little-endian.
        missing: ids that never answer; corrupt / silent / error_byte: bus-wide faults.
        follow: present position tracks the goal (a follower servo that reaches its goal at once).
    """

    MODEL = 777  # STS3215

    def __init__(self, ids, follow: bool = False):
        super().__init__()
        self.tables = {i: bytearray(256) for i in ids}
        for t in self.tables.values():
            t[3:5] = struct.pack("<H", self.MODEL)
            t[56:58] = struct.pack("<H", 2048)
        self.follow = follow
        self.missing: set[int] = set()
        self.corrupt = False
        self.error_byte = 0
        self.received: list[bytes] = []  # every instruction packet, whole
        self.start()

    def set_position(self, sid: int, ticks: int) -> None:
        self.tables[sid][56:58] = struct.pack("<H", ticks & 0xFFFF)

    def goal(self, sid: int) -> int:
        return struct.unpack("<H", self.tables[sid][42:44])[0]

    def torque(self, sid: int) -> int:
        return self.tables[sid][40]

    def _status(self, sid: int, params: bytes = b"") -> bytes:
        p = packet(sid, self.error_byte, params)
        return p[:-1] + bytes([p[-1] ^ 0xFF]) if self.corrupt else p

    def _write(self, sid: int, addr: int, data: bytes) -> None:
        t = self.tables[sid]
        t[addr : addr + len(data)] = data
        if self.follow and addr <= 42 < addr + len(data):
            t[56:58] = t[42:44]

    def _answer(self, sid: int, inst: int, params: bytes) -> bytes:
        if inst == SYNC_READ and sid == BROADCAST:
            addr, n = params[0], params[1]
            out = b""
            for i in params[2:]:
                if i in self.tables and i not in self.missing:
                    out += self._status(i, bytes(self.tables[i][addr : addr + n]))
            return out
        if inst == SYNC_WRITE and sid == BROADCAST:
            addr, n = params[0], params[1]
            data = params[2:]
            for k in range(0, len(data), n + 1):
                if data[k] in self.tables:
                    self._write(data[k], addr, data[k + 1 : k + 1 + n])
            return b""
        if sid not in self.tables or sid in self.missing:
            return b""
        if inst == PING:
            return self._status(sid)
        if inst == READ:
            addr, n = params[0], params[1]
            return self._status(sid, bytes(self.tables[sid][addr : addr + n]))
        if inst == WRITE:
            self._write(sid, params[0], params[1:])
            return self._status(sid)
        return b""

    def handle(self, data: bytes) -> tuple[bytes, bytes]:
        out = b""
        while True:
            k = data.find(b"\xff\xff")
            if k < 0 or len(data) < k + 4:
                return out, data
            n = data[k + 3]
            if len(data) < k + 4 + n:
                return out, data
            pkt, data = data[k : k + 4 + n], data[k + 4 + n :]
            if checksum(pkt[2:-1]) != pkt[-1]:
                continue  # a servo ignores a packet with a bad checksum
            self.received.append(pkt)
            out += self._answer(pkt[2], pkt[4], pkt[5:-1])
