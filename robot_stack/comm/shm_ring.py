"""Shared-memory ring for large array buffers on one host.

Over ``ipc://`` a 1.5 MB RGB-D frame costs two kernel copies plus many socket wake-ups per
subscriber. For same-host streams a publisher can instead copy the buffers once into a slot of a
POSIX shared-memory ring and send only the msgpack header over ZeroMQ; each subscriber copies the
slot out once. This is the technique of Diffusion Policy's / UMI's ``SharedMemoryRingBuffer``,
here behind the same message format (the header says where the buffers are).

Layout of one segment (``/dev/shm/<name>``)::

    [gen[0..S-1]: int64 x S, padded to 64 B][slot 0: capacity B][slot 1] ... [slot S-1]

Each slot is guarded by a sequence lock: the writer sets ``gen[k]`` to an odd value, copies, then
sets it to the next even value, which it puts in the header. A reader copies the slot out and
accepts the copy only if ``gen[k]`` equals the header's value both before and after the copy;
otherwise the writer lapped it (the reader was more than S messages behind) and the sample is
dropped and counted, never returned torn. x86-64 keeps stores and loads in order (TSO), which this
relies on; other architectures (ARM, POWER, RISC-V) would need explicit fences that NumPy cannot
issue, so there :func:`ring_supported` is False and publishers fall back to plain ``ipc://``
(one log line says so).

The header may leave before the copy is done (:meth:`ShmRingWriter.reserve`, then send, then
``commit``): ZeroMQ's delivery of the header (two I/O-thread hops) then overlaps the writer's
copy instead of following it. A reader that finds its slot still odd at exactly ``gen - 1`` (being
filled for this very message) yields until it turns even, for at most ``wait_s``.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import os
import re
import secrets
import time
from multiprocessing import resource_tracker, shared_memory
from collections.abc import Callable

import numpy as np

ALIGN = 64
#: CPUs with total store ordering (stores seen in program order by other cores), where the
#: sequence lock above is correct without fences
TSO_MACHINES = frozenset({"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"})


def ring_supported(machine: str | None = None) -> bool:
    """True where the ring's sequence lock is sound without explicit fences (x86's store ordering);
    ``machine`` defaults to ``platform.machine()``."""
    import platform

    return (machine or platform.machine()).lower() in TSO_MACHINES


NAME_RE = re.compile(r"^rs_[A-Za-z0-9_]{1,60}$")


class ShmError(RobotStackError, RuntimeError):
    """A shared-memory slot could not be read (segment gone, lapped by the writer, bad reference)."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class ShmRingWriter:
    """Owner of one ring segment (created here, unlinked by :meth:`close`).

    Args:
        label: readable part of the segment name (the publishing node).
        capacity: bytes per slot.
        slots: number of slots S; a reader may fall at most S - 1 messages behind.
    """

    def __init__(self, label: str, capacity: int, slots: int = 8):
        if capacity <= 0 or slots < 2:
            raise ValueError("ring needs capacity > 0 and at least 2 slots")
        safe = re.sub(r"[^A-Za-z0-9_]", "_", label)[:32]
        self.name = f"rs_{safe}_{os.getpid()}_{secrets.token_hex(4)}"
        self.capacity = _align(capacity)
        self.slots = slots
        self._hdr = _align(8 * slots)
        self._shm = shared_memory.SharedMemory(self.name, create=True, size=self._hdr + self.capacity * slots)
        self._gen = np.ndarray((slots,), np.int64, buffer=self._shm.buf)
        self._gen[:] = 0
        self._data = np.ndarray((self.capacity * slots,), np.uint8, buffer=self._shm.buf, offset=self._hdr)
        self._next = 0

    def fits(self, sizes: list[int]) -> bool:
        """True if buffers of these sizes fit one slot."""
        return sum(_align(s) for s in sizes) <= self.capacity

    def reserve(self, sizes: list[int]) -> tuple[dict, Callable[[list[memoryview]], None]]:
        """Claim the next slot for buffers of ``sizes`` bytes, before their data is copied.

        The slot is marked as being written (odd generation) at once; the returned reference may be
        sent right away. ``commit(buffers)`` must follow (also when the send failed): it copies the
        buffers in and completes the slot.

        Returns:
            ``(ref, commit)``; ref is ``{"name", "slots", "cap", "slot", "gen", "spans": [[offset,
            nbytes], ...]}`` (offsets within the slot).

        Raises:
            ValueError: the buffers do not fit one slot.
        """
        if not self.fits(sizes):
            raise ValueError(f"buffers of {sum(sizes)} bytes do not fit a {self.capacity}-byte slot")
        k = self._next
        self._next = (k + 1) % self.slots
        g = int(self._gen[k])
        self._gen[k] = g + 1  # odd: being written
        base = k * self.capacity
        spans, off = [], 0
        for n in sizes:
            spans.append([off, n])
            off += _align(n)

        def commit(buffers: list[memoryview]) -> None:
            for (o, n), b in zip(spans, buffers):
                if n:
                    self._data[base + o : base + o + n] = np.frombuffer(b, np.uint8)
            self._gen[k] = g + 2  # even: complete

        return (
            {"name": self.name, "slots": self.slots, "cap": self.capacity, "slot": k, "gen": g + 2, "spans": spans},
            commit,
        )

    def close(self) -> None:
        """Release and unlink the segment."""
        del self._gen, self._data
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


class _Mapped:
    def __init__(self, name: str):
        shm = shared_memory.SharedMemory(name)
        # the writer owns the segment; stop this process's tracker from unlinking it at exit
        try:
            resource_tracker.unregister(shm._name, "shared_memory")
        except Exception:
            pass
        self.shm = shm
        self.buf = np.ndarray((shm.size,), np.uint8, buffer=shm.buf)

    def close(self) -> None:
        del self.buf
        self.shm.close()


class ShmRingReader:
    """Maps ring segments by name (cached) and copies slots out under the sequence lock.

    Args:
        max_segments: segments kept mapped (the oldest is unmapped past this).
        pool_size: private output buffers recycled between reads.
        wait_s: longest wait for a slot whose writer sent the header ahead of the copy, s.
    """

    def __init__(self, max_segments: int = 16, pool_size: int = 8, wait_s: float = 1.0):
        self._maps: dict[str, _Mapped] = {}
        self._wait_s = wait_s
        self.waited = 0  # reads that found their slot still being filled and waited for it
        self._max = max_segments
        self._pool: list[np.ndarray] = []
        self._pool_size = pool_size
        self.lapped = 0

    def _buffer(self, n: int) -> np.ndarray:
        """A private buffer of n bytes, recycled once no decoded array references it any more.

        Reusing buffers avoids the page faults of a fresh multi-MB allocation per frame. A pooled
        buffer is free when the pool holds the only reference (``sys.getrefcount`` == 2: the
        list's and the call's); any array still viewing it keeps it out of reuse.
        """
        import sys

        for b in self._pool:
            if b.shape[0] >= n and sys.getrefcount(b) <= 3:  # pool list + loop variable + call argument
                b.flags.writeable = True
                return b
        b = np.empty(n, np.uint8)
        if len(self._pool) < self._pool_size:
            self._pool.append(b)
        return b

    def read(self, ref: dict) -> list[memoryview]:
        """Copy the referenced slot out and return one read-only view per buffer.

        Args:
            ref: the header's reference ``{"name", "slots", "cap", "slot", "gen", "spans"}``.

        Raises:
            ShmError: bad reference, segment missing, or the slot was overwritten (lapped).
        """
        try:
            name, slots, cap = ref["name"], ref["slots"], ref["cap"]
            slot, gen, spans = ref["slot"], ref["gen"], ref["spans"]
        except (KeyError, TypeError):
            raise ShmError("incomplete shared-memory reference") from None
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ShmError(f"invalid shared-memory segment name {name!r}")
        ints = (slots, cap, slot, gen)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise ShmError("invalid shared-memory reference")
        if slots < 2 or cap <= 0 or not 0 <= slot < slots or gen <= 0 or gen % 2:
            raise ShmError("invalid slot reference")
        if not isinstance(spans, list):
            raise ShmError("invalid spans")
        total = 0
        for span in spans:
            if not (
                isinstance(span, list)
                and len(span) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in span)
            ):
                raise ShmError("invalid span")
            total = max(total, span[0] + span[1])
        m = self._maps.get(name)
        if m is None:
            try:
                m = _Mapped(name)
            except (FileNotFoundError, ValueError, OSError) as e:
                raise ShmError(f"shared-memory segment {name} not available: {e}") from None
            if len(self._maps) >= self._max:  # forget the oldest mapping (a restarted writer)
                self._maps.pop(next(iter(self._maps))).close()
            self._maps[name] = m
        hdr = _align(8 * slots)
        start = hdr + slot * cap
        if total > cap or hdr + slots * cap > m.buf.shape[0]:
            raise ShmError("slot reference out of bounds")
        gen_view = m.buf[: 8 * slots].view(np.int64)
        g = int(gen_view[slot])
        if g == gen - 1:  # the writer is still filling this slot for this message (header sent ahead)
            self.waited += 1
            t0 = time.monotonic()
            while g == gen - 1:
                waited = time.monotonic() - t0
                if waited > self._wait_s:
                    break
                # a copy takes well under 1 ms: yield the CPU to the writer for that long, then nap
                # (a preempted writer on a loaded machine needs a CPU, not a spinning reader)
                if waited < 0.001:
                    os.sched_yield()
                else:
                    time.sleep(0.0002)
                g = int(gen_view[slot])
            if g == gen - 1:
                raise ShmError(f"writer did not complete the slot within {self._wait_s * 1e3:.0f} ms")
        if g != gen:
            self.lapped += 1
            raise ShmError("slot was overwritten before it was read (reader too slow)")
        out = self._buffer(total)[:total]
        np.copyto(out, m.buf[start : start + total])
        if int(gen_view[slot]) != gen:
            self.lapped += 1
            raise ShmError("slot was overwritten while it was read (reader too slow)")
        out.flags.writeable = False
        mv = memoryview(out)
        return [mv[o : o + n] for o, n in spans]

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
