"""The arms' refusals of the policy's chunks, seen by the controller (pure: no sockets, no clock).

An arm node refuses a schedule that fails its checks (workspace, jumps, limits, collision) and
counts it in its state (``RobotState.schedules_refused``). A deterministic policy whose observation
does not change (the arm holds after the refusal) answers every request with the same chunk, which
the arm refuses again: the controller would spend the policy's time and flood the arm's log. With
this watch the controller sees the refusal (the count of any of its arms rose, in a state stamped
after the schedule went out), does not send a chunk equal to the refused one again (counted
``refused_repeats``), and waits before its next request, doubling from ``backoff_s[0]`` up to
``backoff_s[1]`` per repeat in a row. A different chunk goes out as usual and ends the backoff;
so do episode events and holds (:meth:`clear`).
"""

from __future__ import annotations

import numpy as np


class RefusalWatch:
    """Refusals of the chunks sent to the arms, and the repeats not sent again.

    Args:
        atol: two chunks (H, D) are the same when every action agrees within this (units of the
            actions: m, quaternion components, gripper fraction).
        backoff_s: (first, longest) wait before the next request after a refused chunk came again, s.

    Attributes:
        refusals: sent chunks the arms refused.
        refused_repeats: chunks equal to a refused one, not sent.
    """

    def __init__(self, atol: float = 1e-4, backoff_s: tuple[float, float] = (0.5, 4.0)):
        self.atol = atol
        self.backoff_ns = (int(backoff_s[0] * 1e9), int(backoff_s[1] * 1e9))
        self.refusals = 0
        self.refused_repeats = 0
        self._last: np.ndarray | None = None  # the chunk last sent
        self._sent_ns = 0
        self._base: dict[str, int] = {}  # each arm's refusal count when it went out
        self._refused: np.ndarray | None = None  # the chunk the arms refused
        self._in_row = 0

    def arm_state(self, arm: str, refused_total: int, stamp_ns: int) -> bool:
        """An arm's newest state: its refusal count since start and its stamp (ns). True when it
        shows the arm refused the chunk last sent (its count rose in a state stamped after it went
        out); a count seen before any send is the baseline."""
        base = self._base.setdefault(arm, int(refused_total))
        if self._last is None or stamp_ns <= self._sent_ns or refused_total <= base:
            if self._last is None:
                self._base[arm] = int(refused_total)
            return False
        self._base[arm] = int(refused_total)
        self._refused, self._last = self._last, None
        self.refusals += 1
        return True

    def sent(self, chunk: np.ndarray, now_ns: int) -> None:
        """A schedule made from ``chunk`` (the policy's (H, D) actions) went to the arms at ``now_ns``."""
        self._last, self._sent_ns = np.asarray(chunk, float).copy(), int(now_ns)

    def repeats(self, chunk: np.ndarray) -> bool:
        """True when ``chunk`` equals the refused one (counted; the caller does not send it)."""
        c = np.asarray(chunk, float)
        if self._refused is None or c.shape != self._refused.shape or not np.allclose(c, self._refused, atol=self.atol):
            self._in_row = 0
            return False
        self.refused_repeats += 1
        self._in_row += 1
        return True

    def backoff_until(self, now_ns: int) -> int:
        """When the next request may leave after the latest repeat, ns."""
        first, longest = self.backoff_ns
        return int(now_ns + min(longest, first * 2 ** max(0, self._in_row - 1)))

    def clear(self) -> None:
        """Forget the refused chunk (an episode event, a hold, an intervention): the next one goes out."""
        self._refused, self._last, self._in_row = None, None, 0

    def metrics(self) -> dict[str, float]:
        return {"arm_refusals": float(self.refusals), "refused_repeats": float(self.refused_repeats)}
