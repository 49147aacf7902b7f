"""StillWindow on synthetic pose streams (fake stamps): settling, creep, rotation, reordering."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.calibration.stillness import StillWindow

MS = 1_000_000


def pose(x=0.5, yaw_deg=0.0):
    return np.array([x, 0.0, 0.3, *Rotation.from_euler("z", yaw_deg, degrees=True).as_quat()])


def test_still_only_after_a_full_window_inside_tolerance():
    w = StillWindow(window_s=0.3, tol_m=5e-5, tol_deg=0.01)
    # exponential settling: 5 mm off with a 100 ms time constant, sampled at 100 Hz
    became_still = None
    for k in range(200):
        t = k * 10 * MS
        if w.update(t, pose(0.5 + 0.005 * np.exp(-t / 1e8))) and became_still is None:
            became_still = t
    # within 50 um of the final pose from t = 100 ms * ln(5 mm / 50 um) = 461 ms, plus the 300 ms window
    assert became_still == pytest.approx(0.461e9 + 0.3e9, abs=20 * MS)


def test_creep_and_rotation_are_not_still():
    w = StillWindow(window_s=0.3, tol_m=5e-5, tol_deg=0.01)
    assert not any(w.update(k * 10 * MS, pose(0.5 + 2e-6 * k)) for k in range(100))  # 0.2 mm/s: 60 um per window
    w.reset()
    assert not any(
        w.update(k * 10 * MS, pose(yaw_deg=0.0005 * k)) for k in range(100)
    )  # 0.05 deg/s: 0.015 deg per window
    w.reset()
    assert [w.update(k * 10 * MS, pose()) for k in range(32)][-1]  # holding still


def test_reset_and_stale_stamps():
    w = StillWindow(window_s=0.3)
    for k in range(40):
        w.update(k * 10 * MS, pose())
    assert w.still
    assert w.update(100 * MS, pose(0.6))  # older than the newest: ignored
    assert not w.update(400 * MS, pose(0.6))  # a jump: not still until a window has passed
    w.reset()
    assert not w.still
    with pytest.raises(ValueError):
        StillWindow(window_s=0.0)
