"""Cross-correlation delay estimation (pure)."""

import numpy as np
import pytest

from robot_stack.calibration.hand_eye import CalibrationError
from robot_stack.calibration.latency import estimate_delay, main_axis


def signal(t):
    return 0.04 * (1 - np.cos(2 * np.pi * 0.5 * t))


@pytest.mark.parametrize("delay", [0.0, 0.012, 0.08, -0.03])
def test_recovers_known_delay_from_irregular_samples(delay):
    rng = np.random.default_rng(0)
    t_ref = np.arange(0, 8, 0.004)  # robot state at 250 Hz
    t_obs = np.sort(rng.uniform(0, 8, 150))  # camera at ~19 Hz, irregular
    x_obs = -3.0 * signal(t_obs - delay) + 0.2 + rng.normal(0, 1e-3, len(t_obs))  # mirrored, scaled, noisy
    d, corr = estimate_delay((t_ref * 1e9).astype(np.int64), signal(t_ref), (t_obs * 1e9).astype(np.int64), x_obs)
    assert d == pytest.approx(delay, abs=0.003) and corr > 0.99


def test_refuses_no_motion_short_or_uncorrelated():
    t = (np.arange(0, 8, 0.01) * 1e9).astype(np.int64)
    with pytest.raises(CalibrationError, match="no motion"):
        estimate_delay(t, signal(t / 1e9), t, np.zeros(len(t)))
    with pytest.raises(CalibrationError, match="overlap"):
        estimate_delay(t[:100], signal(t[:100] / 1e9), t[:100], signal(t[:100] / 1e9))
    rng = np.random.default_rng(1)
    with pytest.raises(CalibrationError, match="correlation"):
        estimate_delay(t, signal(t / 1e9), t, rng.normal(size=len(t)))


def test_main_axis_projection():
    s = np.linspace(-1, 1, 50)
    pts = np.stack([0.6 * s, 0.8 * s, np.zeros(50)], axis=1) + [1, 2, 3]
    assert np.abs(main_axis(pts)) == pytest.approx(np.abs(s - s.mean()), abs=1e-9)
