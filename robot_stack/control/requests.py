"""When the controller's next inference request leaves, and what a failed one means (pure).

:class:`RequestGate` keeps the request side of the controller's owner thread: whether the policy is
ready (its spec negotiated), whether a request is in flight (one at a time), the back-off after a
refusal or a stale observation, the wait for the frame that advances the observation anchor
(``request_on_frame``: async strategies start inference as that frame arrives), and the count of
unexpected failures in a row that ends the node. Time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from robot_stack.comm.messages import ObservationWindow

MS = 1_000_000


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
    """

    def __init__(self, frame_triggered: bool, max_wait_ns: int, max_failures: int = 20, poll_ns: int = 5 * MS):
        self.frame_triggered, self.max_wait_ns = frame_triggered, max_wait_ns
        self.max_failures, self.poll_ns = max_failures, poll_ns
        self.ready = False
        self.in_flight = False
        self.failures = 0
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
        (``transient`` "timeout": retry at once; "refused": retry after 200 ms) reset the failure
        count; others count, retry a control period later, and return the reason to end the node
        once ``max_failures`` come in a row."""
        self.in_flight = False
        if error is None:
            self.failures = 0
            return None
        if transient:
            self.failures = 0
            self.backoff_until = arrival + (200 * MS if transient == "refused" else 0)
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
