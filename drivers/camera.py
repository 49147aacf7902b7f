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
    """

    stamp_ns: int
    frame_index: int
    color: np.ndarray
    depth: np.ndarray | None = None


class CameraDriver(ABC):
    """A camera. Implementations: synthetic, sim (MuJoCo), RealSense, OpenCV/UVC.

    Attributes:
        K: (3, 3) float64 color intrinsics, pixels.
        depth_scale: metres per depth unit (0.0 when the camera has no depth).
        width, height: image size, pixels.
    """

    K: np.ndarray
    depth_scale: float = 0.0
    width: int
    height: int

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
    """

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0, depth: bool = True):
        self.width, self.height, self.fps = width, height, fps
        self.K = pinhole_K(width, height, 58.0)
        self.depth_scale = 0.001 if depth else 0.0
        self._depth = depth
        self._k = 0
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = ((xx + yy) % 256).astype(np.uint8)
        self._ramp = (500 + (1000 * xx / max(width - 1, 1))).astype(np.uint16)

    def read(self, timeout_s: float = 0.0) -> Frame:
        k = self._k
        self._k += 1
        color = np.empty((self.height, self.width, 3), np.uint8)
        shifted = np.roll(self._base, k, axis=1)
        color[..., 0] = shifted
        color[..., 1] = 255 - shifted
        color[..., 2] = k % 256
        color[0, :8, 0] = np.frombuffer(np.int64(k).tobytes(), np.uint8)
        depth = (self._ramp + (k % 1000)).astype(np.uint16) if self._depth else None
        return Frame(stamp_ns=now_ns(), frame_index=k, color=color, depth=depth)


class SyntheticCameraConfig(DeviceConfig):
    """camera driver ``synthetic``: a moving test pattern with depth (no hardware)."""

    type: Literal["synthetic"] = "synthetic"

    def build(self, ctx, params) -> SyntheticCamera:
        return SyntheticCamera(params.width, params.height, params.rate_hz, params.depth)
