"""Waiting for a condition with a deadline: the one way tests (ours and a lab's) wait."""

from __future__ import annotations

import time
from typing import TypeVar
from collections.abc import Callable

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline (an ``AssertionError``, so pytest reports it as
    a failed check, with the message naming what was awaited)."""


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    *,
    what: str = "",
    poll_s: float = 0.01,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition()`` until it returns a truthy value and return that value.

    Waits on the host clock (``time.monotonic``), not the stack's clock: it is for tests that run
    real processes or threads; an in-process test on a fake clock steps instead of waiting.

    Args:
        condition: called every ``poll_s`` s; its first truthy result is returned.
        timeout_s: the deadline, s (a bound on a loaded machine, not an expected duration).
        what: what is awaited, for the failure message.
        poll_s: poll period, s.
        describe: called on timeout; its text is appended to the message (the state that explains).

    Raises:
        WaitTimeout: the condition stayed falsy for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            msg = (
                f"timed out after {timeout_s:.1f} s waiting for {what or getattr(condition, '__name__', 'a condition')}"
            )
            if describe is not None:
                msg += f": {describe()}"
            raise WaitTimeout(msg)
        time.sleep(poll_s)
