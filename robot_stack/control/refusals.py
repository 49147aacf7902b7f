"""The arms' refusals of the policy's chunks, seen by the controller (pure: no sockets, no clock).

An arm node refuses a schedule that fails its checks (workspace, jumps, limits, collision) and
counts it in its state (``RobotState.schedules_refused``). A deterministic policy whose observation
does not change (the arm holds after the refusal) answers every request with the same chunk, which
the arm refuses again: the controller would spend the policy's time and flood the arm's log. With
this watch the controller sees the refusal (the count of any of its arms rose, in a state stamped
after the schedule went out) and starts a wait: 0.5 s after the refusal, doubling per refusal of
the same chunk in a row up to 4 s. A chunk equal to the refused one that comes during the wait is
held back (counted ``refused_repeats``) and no request leaves until the wait is over; after it the
same chunk may go out once more (a refusal can be transient: a backlog of schedules, an e-stop
since released), and refused again, the wait doubles. A different chunk (a learned policy's next
sample, an observation that changed) goes out as usual and ends the wait; so do episode events and
holds (:meth:`clear`).
"""

from __future__ import annotations

import numpy as np


class RefusalWatch:
    """Refusals of the chunks sent to the arms, and the repeats held back.

    Args:
        atol: two chunks (H, D) are the same when every action agrees within this (units of the
            actions: m, quaternion components, gripper fraction).
        backoff_s: (first, longest) wait after a refusal, s; it doubles per refusal in a row.

    Attributes:
        refusals: sent chunks the arms refused.
        refused_repeats: chunks equal to a refused one, held back during the wait.
        retry_at_ns: the end of the current wait (0: none).
    """

    def __init__(self, atol: float = 1e-4, backoff_s: tuple[float, float] = (0.5, 4.0)):
        self.atol = atol
        self.backoff_ns = (int(backoff_s[0] * 1e9), int(backoff_s[1] * 1e9))
        self.refusals = 0
        self.refused_repeats = 0
        self.retry_at_ns = 0
        self._last: np.ndarray | None = None  # the chunk last sent
        self._sent_ns = 0
        self._base: dict[str, int] = {}  # each arm's refusal count when it went out
        self._refused: np.ndarray | None = None  # the chunk the arms refused
        self._in_row = 0  # refusals of the same chunk in a row

    def arm_state(self, arm: str, refused_total: int, stamp_ns: int) -> bool:
        """An arm's newest state: its refusal count since start and its stamp (ns). True when it
        shows the arm refused the chunk last sent (its count rose in a state stamped after it went
        out); the wait then starts at ``stamp_ns``. A count seen before any send is the baseline."""
        base = self._base.setdefault(arm, int(refused_total))
        if self._last is None or stamp_ns <= self._sent_ns or refused_total <= base:
            if self._last is None:
                self._base[arm] = int(refused_total)
            return False
        self._base[arm] = int(refused_total)
        same = self._refused is not None and self._same(self._last, self._refused)
        self._in_row = self._in_row + 1 if same else 1
        self._refused, self._last = self._last, None
        self.refusals += 1
        first, longest = self.backoff_ns
        self.retry_at_ns = int(stamp_ns + min(longest, first * 2 ** (self._in_row - 1)))
        return True

    def sent(self, chunk: np.ndarray, now_ns: int) -> None:
        """A schedule made from ``chunk`` (the policy's (H, D) actions) went to the arms at ``now_ns``."""
        self._last, self._sent_ns = np.asarray(chunk, float).copy(), int(now_ns)

    def _same(self, a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and bool(np.allclose(a, b, atol=self.atol))

    def repeats(self, chunk: np.ndarray, now_ns: int) -> bool:
        """True when ``chunk`` equals the refused one and the wait is not over (counted; the caller
        does not send it). A different chunk ends the backoff."""
        c = np.asarray(chunk, float)
        if self._refused is None:
            return False
        if not self._same(c, self._refused):
            self._refused, self._in_row, self.retry_at_ns = None, 0, 0
            return False
        if now_ns >= self.retry_at_ns:
            return False  # the wait is over: it may go out once more
        self.refused_repeats += 1
        return True

    def clear(self) -> None:
        """Forget the refused chunk (an episode event, a hold, an intervention): the next one goes out."""
        self._refused, self._last, self._in_row, self.retry_at_ns = None, None, 0, 0

    def metrics(self) -> dict[str, float]:
        return {"arm_refusals": float(self.refusals), "refused_repeats": float(self.refused_repeats)}
