"""One clock and fixed-rate loops.

The stack has a single time base: ``time.monotonic_ns()`` (CLOCK_MONOTONIC on Linux, shared by all
processes on one host). Wall-clock time only ever appears in metadata.

:class:`RateLoop` runs a body at a fixed rate by sleeping to *absolute* deadlines
(``t0 + k * period``), so rounding errors and slow iterations never accumulate into drift. It sleeps
with ``time.sleep`` until ``spin_ns`` before the deadline and busy-waits the rest, which removes the
scheduler's wake-up latency from the period (the technique used by real-time servo loops such as
ur_rtde's ``waitPeriod``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np


class Clock:
    """A time source: the host's CLOCK_MONOTONIC by default; ``robot_stack.testing.FakeClock``
    replaces it in tests (:func:`use_clock`), so every place that reads or waits for time through
    this module (:func:`now_ns`, :func:`sleep`, :class:`RateLoop`) follows the test's clock.

    Attributes:
        real: True for a clock that advances by itself (busy-waiting on it terminates).
    """

    real = True

    def now_ns(self) -> int:
        """Current time, ns."""
        return time.monotonic_ns()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` (a fake clock advances instead)."""
        if seconds > 0:
            time.sleep(seconds)


_clock: Clock = Clock()


def now_ns() -> int:
    """The stack's clock: nanoseconds on CLOCK_MONOTONIC (or the test's clock, :func:`use_clock`)."""
    return _clock.now_ns()


def sleep(seconds: float) -> None:
    """Sleep on the stack's clock, s (a fake clock advances by ``seconds`` at once)."""
    _clock.sleep(seconds)


def current_clock() -> Clock:
    """The clock now in use."""
    return _clock


def use_clock(clock: Clock) -> Clock:
    """Make ``clock`` the stack's clock in this process; returns the previous one (restore it with
    another call). Meant for tests: production code never calls it."""
    global _clock
    prev, _clock = _clock, clock
    return prev


NS_PER_S = 1_000_000_000


def s_to_ns(s: float) -> int:
    """Convert float seconds to integer nanoseconds (rounded to nearest)."""
    return int(round(s * NS_PER_S))


@dataclass(frozen=True)
class JitterStats:
    """Period statistics of a rate loop.

    Attributes:
        periods: number of measured periods.
        overruns: iterations whose body finished after the next deadline.
        period_p50_s, period_p99_s, period_max_s: measured period between iteration starts, s.
        jitter_p50_s, jitter_p99_s, jitter_max_s: |measured period - nominal period|, s.
    """

    periods: int
    overruns: int
    period_p50_s: float
    period_p99_s: float
    period_max_s: float
    jitter_p50_s: float
    jitter_p99_s: float
    jitter_max_s: float

    def as_dict(self) -> dict[str, float]:
        """Flat dict for heartbeats and logs (all values float)."""
        return {k: float(v) for k, v in self.__dict__.items()}


class RateLoop:
    """Fixed-rate loop timer sleeping to absolute deadlines.

    Usage::

        loop = RateLoop(500.0)
        while running:
            do_work()
            loop.sleep()          # returns at t0 + k * period

    Args:
        rate_hz: loop rate in Hz (> 0).
        spin_s: how long before each deadline to stop sleeping and busy-wait, s (default 0.2 ms).
        history: how many recent periods to keep for the jitter statistics.

    Overrun policy: if the body overran one or more deadlines, the loop does not try to catch up
    with a burst of zero-length iterations; it skips the missed deadlines (counted in ``overruns``)
    and continues on the original grid, so the phase never drifts.

    Raises:
        ValueError: if ``rate_hz`` is not positive and finite.
    """

    def __init__(self, rate_hz: float, spin_s: float = 0.0002, history: int = 10_000):
        if not (np.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive finite number, got {rate_hz!r}")
        self.rate_hz = float(rate_hz)
        self.period_ns = int(round(NS_PER_S / rate_hz))
        self.spin_ns = s_to_ns(spin_s)
        self._start_ns = now_ns()
        self._k = 0  # index of the deadline we sleep to next
        self._last_wake_ns: int | None = None
        self._periods = np.zeros(history, dtype=np.int64)
        self._n = 0
        self.overruns = 0
        self.iterations = 0

    @property
    def start_ns(self) -> int:
        """Monotonic time of the loop's grid origin, ns."""
        return self._start_ns

    def next_deadline_ns(self) -> int:
        """Absolute monotonic time of the next deadline, ns."""
        return self._start_ns + (self._k + 1) * self.period_ns

    def reset(self) -> None:
        """Restart the grid at now and clear statistics."""
        self.__init__(self.rate_hz, self.spin_ns / NS_PER_S, len(self._periods))

    def sleep(self, waiter=None) -> int:
        """Sleep until the next deadline on the grid; return the wake-up time, ns.

        If the deadline has already passed, counts an overrun, skips to the next future
        deadline on the grid and returns immediately (no catch-up burst).

        Args:
            waiter: ``waiter(timeout_s)``, called instead of sleeping while the deadline is ahead;
                it returns early to do work between deadlines (a node's inbox: a chunk that arrives
                goes out at once, not at the next tick) and is called again until the deadline.
        """
        self._k += 1
        deadline = self._start_ns + self._k * self.period_ns
        t = now_ns()
        if t > deadline:
            self.overruns += 1
            # jump to the grid point after now: no burst of back-to-back iterations
            self._k = (t - self._start_ns) // self.period_ns
            wake = t
        else:
            spin = self.spin_ns if _clock.real else 0
            remaining = deadline - t - spin
            if waiter is not None:
                while remaining > 0:
                    waiter(remaining / NS_PER_S)
                    remaining = deadline - now_ns() - spin
            elif remaining > 0:
                sleep(remaining / NS_PER_S)
            while True:
                wake = now_ns()
                if wake >= deadline:
                    break
        self._record(wake)
        return wake

    def _record(self, wake: int) -> None:
        if self._last_wake_ns is not None:
            self._periods[self._n % len(self._periods)] = wake - self._last_wake_ns
            self._n += 1
        self._last_wake_ns = wake
        self.iterations += 1

    def stats(self) -> JitterStats:
        """Period and jitter statistics over the recent history (zeros before two iterations)."""
        n = min(self._n, len(self._periods))
        if n == 0:
            return JitterStats(0, self.overruns, 0, 0, 0, 0, 0, 0)
        p = self._periods[:n].astype(np.float64) / NS_PER_S
        j = np.abs(p - self.period_ns / NS_PER_S)
        return JitterStats(
            periods=int(self._n),
            overruns=int(self.overruns),
            period_p50_s=float(np.percentile(p, 50)),
            period_p99_s=float(np.percentile(p, 99)),
            period_max_s=float(p.max()),
            jitter_p50_s=float(np.percentile(j, 50)),
            jitter_p99_s=float(np.percentile(j, 99)),
            jitter_max_s=float(j.max()),
        )


class DeviceClockMapper:
    """Maps a device's timestamps (its own clock) onto the stack clock.

    Estimate: ``offset = min over a sliding window of (host receive time - device time)``; the
    sample with the least transport delay bounds the offset best (the minimum-delay filter of
    clock synchronization, as in NTP's clock filter). ``host stamp = device time + offset``,
    never later than the receive time. When the device clock jumps backwards (device reset, a
    looping recording) or forwards by more than ``max_gap_ns``, the window restarts.

    Args:
        window: number of recent samples in the minimum.
        max_gap_ns: a forward jump larger than this restarts the estimate.
    """

    def __init__(self, window: int = 300, max_gap_ns: int = 5 * NS_PER_S):
        self.window = window
        self.max_gap_ns = max_gap_ns
        self._diffs: list[int] = []
        self._last_dev: int | None = None
        self.resets = 0

    def map(self, device_ns: int, host_recv_ns: int) -> int:
        """Host-clock capture time (ns) of a sample stamped ``device_ns`` and received at ``host_recv_ns``."""
        if self._last_dev is not None and (device_ns <= self._last_dev or device_ns - self._last_dev > self.max_gap_ns):
            self._diffs.clear()
            self.resets += 1
        self._last_dev = device_ns
        self._diffs.append(host_recv_ns - device_ns)
        if len(self._diffs) > self.window:
            del self._diffs[0]
        return min(device_ns + min(self._diffs), host_recv_ns)


class Ticker:
    """Posts ``(tag, now_ns())`` to a queue every ``period_ns`` on its own thread (absolute
    deadlines; a late tick re-anchors, no burst) until :meth:`close`: a rate for work that an owner
    thread does (a node's inbox), without that thread's state being touched here.

    Args:
        period_ns: tick period, ns (> 0).
        inbox: a queue with ``put``.
        tag: the first element of each posted tuple.
    """

    def __init__(self, period_ns: int, inbox, tag: str = "tick"):
        self.period_ns, self.inbox, self.tag = int(period_ns), inbox, tag
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ticker-{tag}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        nxt = now_ns()
        while not self._stop.is_set():
            nxt += self.period_ns
            delay = (nxt - now_ns()) / NS_PER_S
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = now_ns()
            self.inbox.put((self.tag, now_ns()))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
