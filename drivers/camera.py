"""Camera driver interface and a synthetic test-pattern camera.

A driver delivers :class:`Frame` objects whose ``stamp_ns`` is the *capture* time on the stack
clock (``time.monotonic_ns``): the device timestamp mapped to the host clock where the device has
one, else receive time minus a calibrated latency.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import DeviceConfig


@dataclass
class Frame:
    """One captured frame.

    Attributes:
        stamp_ns: capture time on the stack clock, ns.
        frame_index: device frame counter.
        color: (H, W, 3) uint8 RGB.
        depth: (H, W) uint16 depth aligned to color (metres = depth * depth_scale), or None.
        device_stamp_ns: capture time on the device's clock (mid-exposure where reported), ns;
            0 without a device clock.
    """

    stamp_ns: int
    frame_index: int
    color: np.ndarray
    depth: np.ndarray | None = None
    device_stamp_ns: int = 0


class CameraDriver(ABC):
    """A camera. Implementations: synthetic, sim (MuJoCo), RealSense, OpenCV/UVC.

    Attributes:
        K: (3, 3) float64 color intrinsics, pixels.
        depth_scale: metres per depth unit (0.0 when the camera has no depth).
        width, height: image size, pixels.
        has_counter: the device numbers its frames (``frame_index``); without one, a repeated
            frame is recognised by its content.
        clock: the mapping of the device's clock to the stack's
            (:class:`~robot_stack.runtime.clock.DeviceClockMapper`: drift, residual, jumps), or
            None for a camera stamped on the host.
    """

    K: np.ndarray
    depth_scale: float = 0.0
    width: int
    height: int
    has_counter: bool = True
    clock = None

    def start(self) -> None:
        """Open the device."""

    @abstractmethod
    def read(self, timeout_s: float) -> Frame | None:
        """Next frame, or None if none arrived within ``timeout_s``."""

    def stop(self) -> None:
        """Close the device."""


def pinhole_K(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """Intrinsics of an ideal pinhole camera with vertical field of view ``fovy_deg``.

    fy = (H/2) / tan(fovy/2), fx = fy (square pixels), principal point at the image centre
    ((W-1)/2, (H-1)/2) as OpenCV's pixel-centre convention puts it.
    """
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], dtype=np.float64)


class SyntheticCamera(CameraDriver):
    """Deterministic moving test pattern with a depth ramp (for tests and transport benchmarks).

    Frame k: color is a gradient shifted by k pixels with the frame index written into pixel
    (0, 0..7) as little-endian int64 bytes; depth is a ramp 500..1500 mm plus k (mod 1000). Frames are
    paced at ``fps`` by the caller's loop; ``read`` never blocks.

    Args:
        width, height: image size, pixels; fps: the nominal rate, Hz; depth: deliver depth.
        inject: a device clock (offset, drift), delivery latency and jitter, and faults (freeze,
            counter gap, rate drop): :class:`Injection`; the stamps are then mapped by
            :attr:`clock` and each frame's true capture time is kept in ``truth``.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        depth: bool = True,
        inject: Injection | None = None,
    ):
        self.width, self.height, self.fps = width, height, fps
        self.inject = inject
        if inject is not None:  # a device clock, and faults (tests, bench/cameras.py)
            from robot_stack.runtime.clock import DeviceClockMapper

            self.clock = DeviceClockMapper()
            self._rng = np.random.default_rng(inject.seed)
            self._t0: int | None = None
            self._last: Frame | None = None
            self._skip = False
            self._gaps_done: set[int] = set()
            self._lose = 0  # frames still to lose of a gap
            self.truth: dict[int, int] = {}
        self.K = pinhole_K(width, height, 58.0)
        self.depth_scale = 0.001 if depth else 0.0
        self._depth = depth
        self._k = 0
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = ((xx + yy) % 256).astype(np.uint8)
        self._ramp = (500 + (1000 * xx / max(width - 1, 1))).astype(np.uint16)

    def read(self, timeout_s: float = 0.0) -> Frame | None:
        if self.inject is not None:
            return self._injected()
        return self._frame(self._k, now_ns())

    def _frame(self, k: int, stamp_ns: int, device_stamp_ns: int = 0) -> Frame:
        self._k = k + 1
        color = np.empty((self.height, self.width, 3), np.uint8)
        shifted = np.roll(self._base, k, axis=1)
        color[..., 0] = shifted
        color[..., 1] = 255 - shifted
        color[..., 2] = k % 256
        color[0, :8, 0] = np.frombuffer(np.int64(k).tobytes(), np.uint8)
        depth = (self._ramp + (k % 1000)).astype(np.uint16) if self._depth else None
        return Frame(stamp_ns=stamp_ns, frame_index=k, color=color, depth=depth, device_stamp_ns=device_stamp_ns)

    def _injected(self) -> Frame | None:
        """A frame of the camera with a device clock and the faults of ``inject``: captured
        ``latency_ms`` plus uniform 0..``jitter_ms`` before this read, stamped by a device clock
        ``clock_offset_ms`` ahead of the host's and running ``drift_ppm`` fast, the stamp mapped
        by :attr:`clock`; the true capture time of each frame kept in :attr:`truth` (frame index
        -> ns, the last 10,000)."""
        inj, t = self.inject, now_ns()
        if self._t0 is None:
            self._t0 = t
        since = (t - self._t0) / 1e9
        if any(a <= since < a + d for a, d in inj.freeze) and self._last is not None:
            return self._last  # the same frame again
        if any(a <= since < a + d for a, d in inj.rate_drop):
            self._skip = not self._skip
            if self._skip:
                return None  # every other frame not delivered
        for i, (a, lost) in enumerate(inj.gap):
            if since >= a and i not in self._gaps_done:
                self._gaps_done.add(i)
                self._lose += int(lost)
        if self._lose > 0:  # a frame the device numbered and never delivered
            self._lose -= 1
            self._k += 1
            return None
        t_cap = t - int((inj.latency_ms + self._rng.uniform(0.0, inj.jitter_ms)) * 1e6)
        dev = int((t_cap - self._t0) * (1.0 + inj.drift_ppm * 1e-6) + inj.clock_offset_ms * 1e6) + 10**12
        f = self._frame(self._k, self.clock.map(dev, t), device_stamp_ns=dev)
        self.truth[f.frame_index] = t_cap
        if len(self.truth) > 10_000:
            del self.truth[next(iter(self.truth))]
        self._last = f
        return f


class Injection(BaseModel):
    """A device clock and faults for the synthetic camera (tests, ``bench/cameras.py``).

    Times of faults are seconds since the camera's first frame."""

    model_config = ConfigDict(extra="forbid")
    clock_offset_ms: float = Field(0.0, description="device clock ahead of the host's, ms")
    drift_ppm: float = Field(0.0, ge=-1000, le=1000, description="device clock runs this much fast, ppm")
    latency_ms: float = Field(0.0, ge=0, description="capture to delivery, the fastest, ms")
    jitter_ms: float = Field(0.0, ge=0, description="extra delivery delay, uniform from 0 to this, ms")
    freeze: list[tuple[float, float]] = Field([], description="(start s, duration s): the last frame delivered again")
    gap: list[tuple[float, int]] = Field(
        [], description="(at s, frames): that many frames lost (the counter skips them)"
    )
    rate_drop: list[tuple[float, float]] = Field([], description="(start s, duration s): every other frame lost")
    seed: int = 0


class SyntheticCameraConfig(DeviceConfig):
    """camera driver ``synthetic``: a moving test pattern with depth (no hardware); with
    ``inject``, a device clock and faults."""

    type: Literal["synthetic"] = "synthetic"
    inject: Injection | None = Field(None, description="a device clock and faults (tests, benches)")

    def build(self, ctx, params) -> SyntheticCamera:
        return SyntheticCamera(params.width, params.height, params.rate_hz, params.depth, self.inject)
