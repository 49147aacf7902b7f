"""Dynamic batching of inference requests: when a batch closes, and how a batch is answered.

A policy server that serves many controllers answers the requests that arrive within a short
window as one batch: one network evaluation for B observation windows costs far less than B
evaluations where per-call overhead dominates (small models, CPUs, GPU kernel launches). The window
opens at the first request and closes ``window_s`` later or as soon as ``max_batch`` requests are
held, whichever comes first (the policy of Triton's dynamic batcher and Ray Serve's
``@serve.batch``: ``max_queue_delay`` / ``batch_wait_timeout_s`` and ``max_batch_size``).

Pure logic on integer nanosecond stamps, so it is tested with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BatchWindow:
    """The batching window of one batch.

    Args:
        window_s: longest wait after the first request, s (>= 0; 0: take what is already queued).
        max_batch: most requests per batch (>= 1; 1: no batching).
    Raises:
        ValueError: a negative window or a max_batch below 1.
    """

    window_s: float
    max_batch: int
    opened_ns: int | None = None

    def __post_init__(self) -> None:
        if self.window_s < 0 or self.max_batch < 1:
            raise ValueError(
                f"batch window needs window_s >= 0 and max_batch >= 1, got {self.window_s}, {self.max_batch}"
            )

    def open(self, t_ns: int) -> None:
        """The first request of the batch arrived at ``t_ns``."""
        self.opened_ns = int(t_ns)

    def closed(self, t_ns: int, held: int) -> bool:
        """True when the batch must run now: ``held`` >= max_batch, or the window has passed."""
        if held >= self.max_batch:
            return True
        return self.opened_ns is not None and t_ns - self.opened_ns >= self.window_s * 1e9

    def remaining_s(self, t_ns: int) -> float:
        """Seconds until the window passes (0 when passed or not opened)."""
        if self.opened_ns is None:
            return 0.0
        return max(0.0, (self.opened_ns + self.window_s * 1e9 - t_ns) / 1e9)
