"""A serial device behind a pseudo-terminal: the base of the byte-exact fakes (Feetech and Dynamixel
servo buses, the Robotiq gripper).

The SDK under test opens :attr:`PtyDevice.port` (the pty's slave path) like any serial port; a thread
reads what it writes on the master side and hands the bytes to :meth:`PtyDevice.handle`, which parses
whole frames and returns the device's answers. Nothing here knows a protocol.
"""

from __future__ import annotations

import os
import pty
import select
import threading
import tty


class PtyDevice:
    """Owns the pty and the reading thread; subclasses implement :meth:`handle` and call
    :meth:`start` at the end of their ``__init__`` (once the state ``handle`` reads exists).

    Attributes:
        port: the slave path for the SDK to open.
        silent: read and count frames, answer nothing (a device that stopped answering).
    """

    read_size = 4096

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.silent = False
        self._stop = threading.Event()
        self._pending = b""
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}-pty", daemon=True)

    def start(self):
        """Start answering; returns self."""
        self._thread.start()
        return self

    def handle(self, data: bytes) -> tuple[bytes, bytes]:
        """Parse the bytes received and not yet used: return (the answer to write, the bytes of
        an incomplete frame to keep for the next read). A frame the device ignores (a bad
        checksum, another id) is consumed with no answer."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            try:
                self._pending += os.read(self.master, self.read_size)
            except OSError:
                return  # closed
            answer, self._pending = self.handle(self._pending)
            if answer and not self.silent:
                os.write(self.master, answer)

    def close(self) -> None:
        """Stop the thread and close both ends of the pty (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
