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
    """Maps a device's timestamps (its own clock) onto the stack clock, with its drift.

    Each sample gives a point (device time x, host receive time - device time y); y is the clock
    offset plus that sample's transport delay, so the offset line lies under every point. The
    estimate is the line under all points of a sliding window that lies closest to them on
    average: the edge of their lower convex hull over the window's mean device time (the linear
    programme of Moon, Skelly & Towsley, "Estimation and removal of clock skew from network delay
    measurements", INFOCOM 1999; the convex-hull view of TICSync, Harrison & Newman, ICRA 2011).
    Its slope gives the drift of the device clock against the host's. While the window spans less
    than ``min_span_ns`` of device time, or the slope exceeds ``max_drift_ppm`` (a crystal drifts
    by tens of ppm), the slope is taken as 0: the offset is then the minimum of y over the window
    (the minimum-delay filter of NTP's clock filter). ``host stamp = device time + offset``, never
    later than the receive time.

    Discontinuities restart the estimate and are counted in :attr:`jumps`: the device clock jumping
    backwards (device reset, a looping recording; also :attr:`resets`) or forwards by more than
    ``max_gap_ns``, and the offset stepping by more than ``jump_ns``: down at once (a sample far
    under the line), or up (``step_samples`` samples in a row above the line by more than that).

    Args:
        window: number of recent samples in the estimate.
        max_gap_ns: a forward device-clock jump larger than this restarts the estimate.
        min_span_ns: device time the window must span before the drift is estimated.
        max_drift_ppm: a larger estimated drift is not believed (slope 0).
        jump_ns: an offset step larger than this is a clock jump.
        step_samples: samples in a row above the line by ``jump_ns`` that make an upward step.

    Attributes:
        drift_ppm: estimated drift of the device clock against the host's, ppm (positive: the
            device clock runs fast).
        residual_ns: median delay of the window's samples above the offset line, ns (the
            transport's delay beyond its fastest delivery).
        resets: device-clock jumps; jumps: every restart (device-clock jumps and offset steps).
    """

    def __init__(
        self,
        window: int = 300,
        max_gap_ns: int = 5 * NS_PER_S,
        min_span_ns: int = 2 * NS_PER_S,
        max_drift_ppm: float = 500.0,
        jump_ns: int = 5_000_000,
        step_samples: int = 60,
    ):
        self.window, self.max_gap_ns, self.min_span_ns = window, max_gap_ns, min_span_ns
        self.max_drift, self.jump_ns, self.step_samples = max_drift_ppm * 1e-6, jump_ns, step_samples
        self._x: list[int] = []  # device times, ns
        self._y: list[int] = []  # receive - device, ns
        self._line: tuple[int, float, float] | None = None  # (x0, offset at x0, slope)
        self._above = 0  # samples in a row above the line by more than jump_ns
        self._n = 0  # samples since start
        self.drift_ppm = 0.0
        self.resets = 0
        self.jumps = 0

    #: the hull is refitted every this many samples (a fit costs about 1 ms for 300 samples); in
    #: between, the line keeps its slope and moves down under any sample below it
    REFIT_EVERY = 10

    def _restart(self) -> None:
        self._x.clear()
        self._y.clear()
        self._line, self._above = None, 0
        self.jumps += 1

    def _offset(self, x: int) -> float:
        x0, b0, slope = self._line
        return b0 + slope * (x - x0)

    def map(self, device_ns: int, host_recv_ns: int) -> int:
        """Host-clock capture time (ns) of a sample stamped ``device_ns`` and received at ``host_recv_ns``."""
        device_ns, host_recv_ns = int(device_ns), int(host_recv_ns)
        if self._x and (device_ns <= self._x[-1] or device_ns - self._x[-1] > self.max_gap_ns):
            self.resets += 1
            self._restart()
        y = host_recv_ns - device_ns
        if self._line is not None:
            above = y - self._offset(device_ns)
            if above < -self.jump_ns:  # far under the line: the offset stepped down
                self._restart()
            elif above > self.jump_ns:
                self._above += 1
                if self._above >= self.step_samples:  # stayed far above: the offset stepped up
                    self._restart()
            else:
                self._above = 0
        self._x.append(device_ns)
        self._y.append(y)
        if len(self._x) > self.window:
            del self._x[0], self._y[0]
        self._n += 1
        if (
            self._line is None
            or self._n % self.REFIT_EVERY == 0
            or (self._line[2] == 0.0 and self._x[-1] - self._x[0] < self.min_span_ns)
        ):
            self._fit()
        elif (below := self._offset(device_ns) - y) > 0:  # between fits: the line stays under every point
            x0, b0, slope = self._line
            self._line = (x0, b0 - below, slope)
        return min(int(round(device_ns + self._offset(device_ns))), host_recv_ns)

    def _fit(self) -> None:
        xs, ys = self._x, self._y
        x0 = xs[0]
        slope = 0.0
        if xs[-1] - x0 >= self.min_span_ns and len(xs) >= 3:
            hull: list[int] = []  # indices of the lower convex hull (xs strictly increase)
            for i in range(len(xs)):
                while len(hull) >= 2:
                    a, b = hull[-2], hull[-1]
                    # b is not under the chord a-i: drop it
                    if (ys[b] - ys[a]) * (xs[i] - xs[a]) >= (ys[i] - ys[a]) * (xs[b] - xs[a]):
                        hull.pop()
                    else:
                        break
                hull.append(i)
            mean_x = x0 + sum(x - x0 for x in xs) / len(xs)
            for a, b in zip(hull, hull[1:]):
                if xs[b] >= mean_x:
                    slope = (ys[b] - ys[a]) / (xs[b] - xs[a])
                    break
            if abs(slope) > self.max_drift:
                slope = 0.0
        if slope == 0.0:
            base = min(ys)
            self._line = (x0, float(base), 0.0)
        else:
            base = min(y - slope * (x - x0) for x, y in zip(xs, ys))  # the edge's line, under every point
            self._line = (x0, float(base), slope)
        self.drift_ppm = -slope / (1.0 + slope) * 1e6  # y = offset - drift * x / (1 + drift)

    @property
    def residual_ns(self) -> float:
        """Median delay of the window's samples above the offset line, ns (0 before a sample)."""
        if self._line is None:
            return 0.0
        res = sorted(y - self._offset(x) for x, y in zip(self._x, self._y))
        return float(res[len(res) // 2])


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
