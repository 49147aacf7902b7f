"""UVC / V4L2 camera through OpenCV (color only; no device timestamps).

Capture stamp = receive time minus ``latency_s`` (calibrate it with the latency calibration).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.clock import now_ns, s_to_ns
from robot_stack.runtime.devices import DeviceConfig, Check, path_check
from robot_stack.drivers.camera import CameraDriver, Frame, pinhole_K


class OpenCVCamera(CameraDriver):
    """An OpenCV ``VideoCapture`` device.

    Args:
        device: index (0) or path (/dev/video0, or a video file for tests).
        width, height, fps: requested settings.
        fovy_deg: nominal vertical field of view for K until the camera is calibrated.
        latency_s: receive-to-capture latency subtracted from the receive time (measure it with
            ``robot-stack calibrate latency``).
    """

    #: ``frame_index`` counts reads, not the device's frames: a repeated image is found by content
    has_counter = False

    def __init__(
        self,
        device: int | str = 0,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        fovy_deg: float = 45.0,
        latency_s: float = 0.0,
    ):
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.fovy_deg, self.latency_ns = fovy_deg, s_to_ns(latency_s)
        self.depth_scale = 0.0
        self._k = 0

    def start(self) -> None:
        import cv2

        self._cap = cv2.VideoCapture(self.device)
        if not self._cap.isOpened():
            raise RuntimeError(f"cannot open camera {self.device!r}")
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap.set(cv2.CAP_PROP_FPS, self.fps)
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or self.width
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or self.height
        self.K = pinhole_K(self.width, self.height, self.fovy_deg)

    def read(self, timeout_s: float) -> Frame | None:
        import cv2

        ok, bgr = self._cap.read()
        t = now_ns()
        if not ok:
            return None
        self._k += 1
        color = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Frame(stamp_ns=t - self.latency_ns, frame_index=self._k, color=np.ascontiguousarray(color))

    def stop(self) -> None:
        if hasattr(self, "_cap"):
            self._cap.release()


class OpenCVCameraConfig(DeviceConfig):
    """camera driver ``opencv``: a UVC/V4L2 camera (color only) through OpenCV's VideoCapture."""

    type: Literal["opencv"] = "opencv"
    requires = ("cv2",)
    device: int | str = Field(0, description="device index or path (/dev/video0, or a video file)")
    latency_s: float = Field(0.0, ge=0, description="receive-to-capture latency (latency calibration)")

    def doctor(self) -> list[Check]:
        path = self.device if isinstance(self.device, str) else f"/dev/video{self.device}"
        return [path_check(f"UVC camera {self.device}", path, "plug it in; ls /dev/video* lists the host's cameras")]

    def build(self, ctx, params) -> OpenCVCamera:
        return OpenCVCamera(self.device, params.width, params.height, params.rate_hz, latency_s=self.latency_s)
