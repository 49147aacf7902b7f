"""A fake clock for in-process tests: time moves only when the test (or a sleep) moves it."""

from __future__ import annotations

import threading

from robot_stack.runtime import clock as _clock_mod


class FakeClock(_clock_mod.Clock):
    """The stack's clock under a test's control.

    Installed with :meth:`install` (or as a context manager), it replaces the host clock for every
    reader of :func:`robot_stack.runtime.clock.now_ns` and :func:`~robot_stack.runtime.clock.sleep`
    in this process, :class:`~robot_stack.runtime.clock.RateLoop` included: a sleep advances the
    fake time at once instead of blocking, so a node steps deterministically and a test of a 15 s
    episode takes milliseconds.

    Args:
        start_ns: the time at install, ns (large enough that ``stamp_ns == 0`` means "unset").
    """

    real = False

    def __init__(self, start_ns: int = 1_000_000_000_000):
        self._t = int(start_ns)
        self._lock = threading.Lock()
        self._prev: _clock_mod.Clock | None = None

    def now_ns(self) -> int:
        with self._lock:
            return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> int:
        """Move the time on by ``seconds`` (>= 0) and return the new time, ns.

        Raises:
            ValueError: a negative step (the stack's clock is monotonic).
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        with self._lock:
            self._t += int(round(seconds * 1e9))
            return self._t

    def set_ns(self, t_ns: int) -> None:
        """Jump to ``t_ns`` (not before the current time).

        Raises:
            ValueError: ``t_ns`` is in the past.
        """
        with self._lock:
            if t_ns < self._t:
                raise ValueError(f"a monotonic clock cannot go back ({t_ns} < {self._t})")
            self._t = int(t_ns)

    def install(self) -> FakeClock:
        """Make this the stack's clock in this process (undo with :meth:`uninstall`)."""
        self._prev = _clock_mod.use_clock(self)
        return self

    def uninstall(self) -> None:
        if self._prev is not None:
            _clock_mod.use_clock(self._prev)
            self._prev = None

    def __enter__(self) -> FakeClock:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()
