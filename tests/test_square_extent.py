"""The bring-up square's size check (``robot-stack demo --square``): measured between the sides'
middles, so corner overshoot is not size, and a wrong scale still shows (pure logic)."""

import numpy as np

from robot_stack.apps.demo import _square_extent
from robot_stack.control.paths import square


def trace(center, side, overshoot=0.0, n=200):
    """TCP samples along the square's corners, with ``overshoot`` m past each corner along the side."""
    c = square(center, side)
    pts = []
    for a, b in zip(c[:-1], c[1:]):
        u = (b - a) / np.linalg.norm(b - a)
        s = np.linspace(0, 1, n)[:, None]
        pts += [a + s * (b - a), b + np.linspace(0, overshoot, 10)[:, None] * u]
    return np.concatenate(pts)


def test_corner_overshoot_is_not_size():
    center = np.array([0.5, 0.1, 0.3])
    p = trace(center, 0.10, overshoot=0.006)
    assert np.ptp(p[:, 0]) > 0.1055  # what the old span check read: 11 mm over with both corners
    np.testing.assert_allclose(_square_extent(p, center, 0.10), [0.10, 0.10], atol=1e-9)


def test_a_wrong_scale_shows():
    center = np.array([0.5, 0.1, 0.3])
    p = trace(center, 0.11)  # the arm traced 10 % too large (a TCP or unit error)
    np.testing.assert_allclose(_square_extent(p, center, 0.10), [0.11, 0.11], atol=1e-9)
    assert np.isnan(_square_extent(p[:10], center, 0.10)).all()  # no samples on the sides: NaN, never "ok"
