"""Frame health of one camera (pure): repeated frames, counter gaps, a low rate, clock jumps.

The camera node hands every frame its driver delivers to :meth:`FrameHealth.check` and calls
:meth:`FrameHealth.tick` every step; only fresh frames are published, so a camera that keeps
delivering the same image looks, to the controller, like a camera that stopped (its frames age and
the controller holds). Each fault is counted once per episode of it (a freeze of 100 repeated
frames is one ``freezes`` and 100 ``duplicates``) and logged when it starts and ends:

- **duplicate**: the same frame counter as the last fresh frame (a frozen driver); for a device
  without a counter (``has_counter`` false: UVC/OpenCV), the same image content. A still sim scene
  renders identical images, so content is never compared where there is a counter.
- **gap**: the counter skipped frames (``frames_lost`` counts them; a counter that goes backwards
  is a device reset, counted as a gap of 0 frames).
- **rate low**: fewer frames delivered than ``min_rate_fraction`` of the configured rate over the
  last ``window_s`` (repeated frames count as delivered: a freeze is not a rate drop); it ends
  once the rate is back over ``min_rate_fraction`` + 0.1 of it.
- **clock jump**: the driver's device-clock mapping restarted
  (:class:`~robot_stack.runtime.clock.DeviceClockMapper` ``jumps``).
"""

from __future__ import annotations

import collections
import logging
import zlib

import numpy as np

log = logging.getLogger(__name__)


class FrameHealth:
    """Checks of one camera's frames (see the module docstring).

    Args:
        name: the camera's id, for the log.
        rate_hz: the configured frame rate, Hz.
        has_counter: the device numbers its frames.
        window_s: the span over which the delivered rate is measured, s.
        min_rate_fraction: a rate below this fraction of ``rate_hz`` is low.

    Attributes:
        counts: ``duplicates``, ``freezes``, ``gaps``, ``frames_lost``, ``rate_drops``,
            ``clock_jumps`` (events since start).
        rate_hz: the delivered rate over the last window, Hz (0 until a window has passed).
    """

    def __init__(
        self,
        name: str,
        rate_hz: float,
        has_counter: bool = True,
        window_s: float = 2.0,
        min_rate_fraction: float = 0.8,
    ):
        self.name, self.rate, self.has_counter = name, float(rate_hz), has_counter
        self.window_ns, self.min_fraction = int(window_s * 1e9), float(min_rate_fraction)
        self.counts = collections.Counter(
            dict.fromkeys(("duplicates", "freezes", "gaps", "frames_lost", "rate_drops", "clock_jumps"), 0)
        )
        self.rate_hz = 0.0
        self._delivered: collections.deque[int] = collections.deque()  # receive times in the window
        self._t_first: int | None = None
        self._last_index: int | None = None
        self._last_digest: int | None = None
        self._frozen = False
        self._rate_low = False
        self._jumps = 0

    def check(self, frame_index: int, color: np.ndarray, t_ns: int) -> bool:
        """One delivered frame, received at ``t_ns`` (ns): True if it is fresh (publish it), False
        if it repeats the last fresh frame."""
        self._delivered.append(t_ns)
        if self._t_first is None:
            self._t_first = t_ns
        if self.has_counter:
            repeated = frame_index == self._last_index
        else:
            digest = zlib.crc32(np.ascontiguousarray(color).data)
            repeated, self._last_digest = digest == self._last_digest, digest
        if repeated:
            self.counts["duplicates"] += 1
            if not self._frozen:
                self._frozen = True
                self.counts["freezes"] += 1
                log.warning("camera %s: frame %d delivered again (a frozen driver?)", self.name, frame_index)
            return False
        if self._frozen:
            self._frozen = False
            log.warning("camera %s: fresh frames again from %d", self.name, frame_index)
        if self.has_counter and self._last_index is not None and frame_index != self._last_index + 1:
            lost = max(0, frame_index - self._last_index - 1)
            self.counts["gaps"] += 1
            self.counts["frames_lost"] += lost
            log.warning(
                "camera %s: frame counter %d after %d (%s)",
                self.name,
                frame_index,
                self._last_index,
                f"{lost} frames lost" if lost else "counter reset",
            )
        self._last_index = frame_index
        return True

    def clock_jumps(self, jumps: int) -> None:
        """The driver's clock mapping's restart count so far; an increase is counted and logged."""
        if jumps > self._jumps:
            self.counts["clock_jumps"] += jumps - self._jumps
            log.warning("camera %s: its device clock mapping jumped (restarted)", self.name)
        self._jumps = jumps

    def tick(self, t_ns: int) -> None:
        """Measure the delivered rate over the window ending at ``t_ns`` (once a window has passed)."""
        while self._delivered and self._delivered[0] <= t_ns - self.window_ns:
            self._delivered.popleft()
        if self._t_first is None or t_ns - self._t_first < self.window_ns:
            return
        self.rate_hz = len(self._delivered) * 1e9 / self.window_ns
        # back to normal only at 90 % of the configured rate (hysteresis: no flapping at the bound)
        bound = (self.min_fraction + 0.1) if self._rate_low else self.min_fraction
        low = self.rate_hz < bound * self.rate
        if low and not self._rate_low:
            self.counts["rate_drops"] += 1
            log.warning(
                "camera %s: %.1f Hz over the last %.1f s (configured %.0f Hz)",
                self.name,
                self.rate_hz,
                self.window_ns / 1e9,
                self.rate,
            )
        elif self._rate_low and not low:
            log.warning("camera %s: back at %.1f Hz", self.name, self.rate_hz)
        self._rate_low = low

    def metrics(self) -> dict[str, float]:
        """``health.<count>`` and ``rate_hz`` (the delivered rate)."""
        return {f"health.{k}": float(v) for k, v in self.counts.items()} | {"rate_hz": self.rate_hz}
