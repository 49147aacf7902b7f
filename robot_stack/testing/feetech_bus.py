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

import os
import pty
import select
import struct
import threading
import tty

PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
BROADCAST = 0xFE


def checksum(body: bytes) -> int:
    """~(ID + LEN + INST/ERR + params) & 0xFF over the bytes after the FF FF header."""
    return ~sum(body) & 0xFF


def packet(sid: int, inst_or_err: int, params: bytes = b"") -> bytes:
    body = bytes([sid, len(params) + 2, inst_or_err]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


class FakeFeetechBus:
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
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.tables = {i: bytearray(256) for i in ids}
        for t in self.tables.values():
            t[3:5] = struct.pack("<H", self.MODEL)
            t[56:58] = struct.pack("<H", 2048)
        self.follow = follow
        self.missing: set[int] = set()
        self.corrupt = self.silent = False
        self.error_byte = 0
        self.received: list[bytes] = []  # every instruction packet, whole
        self._stop = threading.Event()
        self._buf = b""
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

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

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            try:
                self._buf += os.read(self.master, 4096)
            except OSError:
                return
            while True:
                k = self._buf.find(b"\xff\xff")
                if k < 0 or len(self._buf) < k + 4:
                    break
                n = self._buf[k + 3]
                if len(self._buf) < k + 4 + n:
                    break
                pkt, self._buf = self._buf[k : k + 4 + n], self._buf[k + 4 + n :]
                if checksum(pkt[2:-1]) != pkt[-1]:
                    continue  # a servo ignores a packet with a bad checksum
                self.received.append(pkt)
                reply = self._answer(pkt[2], pkt[4], pkt[5:-1])
                if reply and not self.silent:
                    os.write(self.master, reply)

    def close(self) -> None:
        self._stop.set()
        self._t.join(1)
        os.close(self.master)
        os.close(self.slave)
