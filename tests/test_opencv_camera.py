"""OpenCV/UVC camera driver against a video file (VideoCapture opens files like devices)."""

import cv2
import numpy as np
import pytest

from robot_stack.drivers.opencv_camera import OpenCVCamera


def test_reads_frames_rgb_with_stamps_and_intrinsics(tmp_path):
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    assert w.isOpened()
    for i in range(5):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[..., 2] = 200  # red in BGR
        bgr[:, : 10 * (i + 1), 1] = 100
        w.write(bgr)
    w.release()
    cam = OpenCVCamera(path, 64, 48, 30.0, fovy_deg=45.0, latency_s=0.02)
    cam.start()
    frames = [cam.read(0.1) for _ in range(5)]
    assert cam.read(0.1) is None  # end of the clip
    cam.stop()
    assert all(f is not None for f in frames)
    f = frames[0]
    assert f.color.shape == (48, 64, 3) and f.depth is None and cam.depth_scale == 0.0
    assert f.color[..., 0].mean() == pytest.approx(200, abs=8)  # RGB order: red channel first
    assert [x.frame_index for x in frames] == [1, 2, 3, 4, 5]
    assert all(a.stamp_ns < b.stamp_ns for a, b in zip(frames, frames[1:]))
    assert cam.K[1, 1] == pytest.approx(24 / np.tan(np.radians(22.5)))


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot open camera"):
        OpenCVCamera(str(tmp_path / "nope.avi")).start()
