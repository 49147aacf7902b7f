"""When the controller's next inference request leaves, and what a failed one means (pure).

:class:`RequestGate` keeps the request side of the controller's owner thread: whether the policy is
ready (its spec negotiated), whether a request is in flight (one at a time), the back-off after a
refusal or a stale observation, the wait for the frame that advances the observation anchor
(``request_on_frame``: async strategies start inference as that frame arrives), and the count of
unexpected failures in a row that ends the node. Time is passed in.

An outage (failed requests since the last chunk) is logged when it starts, summed up every 5 s,
and logged once when the policy answers again, never once per retry; refusals back off from
200 ms, doubling to 2 s; once the policy has answered, an outage longer than ``lost_after_ns``
ends the node by name (the launcher reports it and the arms hold), whatever kind its errors are
(before its first answer a policy may still be loading its model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from robot_stack.comm.messages import ObservationWindow

MS = 1_000_000

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What to do about a request now: ``request`` it, ``await_frame`` of camera ``camera`` newer
    than ``seq``, or nothing (``wake_at_ns``: check again then; None: on the next event)."""

    request: bool = False
    await_frame: bool = False
    wake_at_ns: int | None = None
    timed_out: bool = False


class RequestGate:
    """The request side of the controller (see the module docstring).

    Args:
        frame_triggered: wait for the anchor camera's next frame before a request (async
            strategies with ``request_on_frame``).
        max_wait_ns: longest wait for that frame (``max_obs_age_s``), ns.
        max_failures: unexpected failures in a row that end the node.
        poll_ns: how often to check again while a request is not yet due, ns.
        lost_after_ns: an outage this long ends the node, ns (None: never).

    Attributes:
        outage_since: when the current outage's first failure came back, ns (None: no outage).
        outage_errors: failed requests in the current outage.
    """

    #: back-off after a refusal: from this, doubling per refusal in a row, up to REFUSED_MAX_NS
    REFUSED_BACKOFF_NS = 200 * MS
    REFUSED_MAX_NS = 2_000 * MS
    #: an outage is summed up in the log this often
    OUTAGE_LOG_NS = 5_000 * MS

    def __init__(
        self,
        frame_triggered: bool,
        max_wait_ns: int,
        max_failures: int = 20,
        poll_ns: int = 5 * MS,
        lost_after_ns: int | None = None,
    ):
        self.frame_triggered, self.max_wait_ns = frame_triggered, max_wait_ns
        self.max_failures, self.poll_ns, self.lost_after_ns = max_failures, poll_ns, lost_after_ns
        self.ready = False
        self.in_flight = False
        self.failures = 0
        self.refusals = 0  # refusals in a row (the back-off's exponent)
        self.outage_since: int | None = None
        self.outage_errors = 0
        self._outage_logged = 0
        self.answered = False  # a policy that never answered yet (loading) is not lost
        self.backoff_until = 0
        self.waiting: tuple[str, int, int] | None = None  # (camera topic, its seq, deadline)

    def decide(self, now: int, driving: bool, due: bool, next_ns: int, anchor: tuple[str, int] | None) -> Decision:
        """Whether a request leaves at ``now``.

        Args:
            driving: the policy drives now (mode machine).
            due: the strategy wants a request now; next_ns: the earliest time it may.
            anchor: (topic, seq) of the newest frame of the camera that holds the anchor back, or
                None (no cameras, or one has sent nothing: assembly names it).
        """
        if not (self.ready and driving) or self.in_flight:
            return Decision()
        if self.waiting is not None:
            if now < self.waiting[2]:
                return Decision(wake_at_ns=self.waiting[2])
            self.waiting = None  # the camera stalled: the request goes, and assembly names the stream
            return Decision(request=True, timed_out=True)
        if now < self.backoff_until or not due:
            return Decision(wake_at_ns=max(now + MS, min(max(self.backoff_until, next_ns), now + self.poll_ns)))
        if self.frame_triggered and anchor is not None:
            self.waiting = (anchor[0], anchor[1], now + self.max_wait_ns)
            return Decision(await_frame=True, wake_at_ns=self.waiting[2])
        return Decision(request=True)

    def on_frame(self, topic: str, seq: int) -> bool:
        """A frame arrived: True when it is the one a request waits for (the request leaves now)."""
        if self.waiting is not None and topic == self.waiting[0] and seq > self.waiting[1]:
            self.waiting = None
            return True
        return False

    def sent(self) -> None:
        self.in_flight = True

    def held(self, now: int, dt_ns: int) -> None:
        """The observation was stale: no request; try again a control period later."""
        self.backoff_until = now + dt_ns

    def replied(self, arrival: int, error: Exception | None, transient: str | None, dt_ns: int) -> str | None:
        """A reply (or the error instead of one) came back at ``arrival``. Transient errors
        (``transient`` "timeout": retry at once; "refused": retry after 200 ms, doubling per
        refusal in a row up to 2 s) reset the failure count; others count and retry a control
        period later. Returns the reason to end the node: ``max_failures`` unexpected failures in
        a row, or (after a first answer) an outage longer than ``lost_after_ns``."""
        self.in_flight = False
        if error is None:
            if self.outage_since is not None:
                log.warning(
                    "policy answering again after %d failed requests in %.1f s",
                    self.outage_errors,
                    (arrival - self.outage_since) / 1e9,
                )
            self.failures = self.refusals = self.outage_errors = 0
            self.outage_since, self.answered = None, True
            return None
        what = f"{transient or type(error).__name__}: {error}"
        if self.outage_since is None:
            self.outage_since, self._outage_logged = arrival, arrival
            log.error("inference failed (%s); retrying, logged again every %.0f s", what, self.OUTAGE_LOG_NS / 1e9)
        elif arrival - self._outage_logged >= self.OUTAGE_LOG_NS:
            self._outage_logged = arrival
            log.error(
                "inference still failing: %d requests in %.1f s, last %s",
                self.outage_errors + 1,
                (arrival - self.outage_since) / 1e9,
                what,
            )
        self.outage_errors += 1
        if self.answered and self.lost_after_ns is not None and arrival - self.outage_since >= self.lost_after_ns:
            return (
                f"policy unreachable for {(arrival - self.outage_since) / 1e9:.1f} s "
                f"({self.outage_errors} failed requests, last {what})"
            )
        if transient:
            self.failures = 0
            if transient == "refused":
                self.refusals += 1
                wait = min(self.REFUSED_BACKOFF_NS * 2 ** (self.refusals - 1), self.REFUSED_MAX_NS)
            else:
                self.refusals, wait = 0, 0
            self.backoff_until = arrival + wait
            return None
        self.failures += 1
        self.backoff_until = arrival + dt_ns
        if self.failures >= self.max_failures:
            return f"inference failed {self.failures} times in a row, last: {type(error).__name__}: {error}"
        return None

    def clear(self) -> None:
        """The plan was dropped: a frame wait is abandoned."""
        self.waiting = None


@dataclass
class Job:
    """One inference request in flight: what the owner needs back to execute its chunk."""

    generation: int
    window: ObservationWindow
    t_obs_ns: int
    t_assemble_ns: int
    t_send_ns: int
    with_prefix: bool
