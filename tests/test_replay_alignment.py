"""Replay's path comparison (robot_stack.apps.replay): errors at equal times and at the best lag."""

import numpy as np
import pytest

from robot_stack.apps.replay import best_lag, path_error_mm


def _path(t_s: np.ndarray) -> np.ndarray:
    """A curved path at about 0.15 m/s (the expert's speed), (N, 3) in m."""
    return np.stack([0.4 + 0.1 * np.sin(1.5 * t_s), 0.1 * np.cos(1.5 * t_s), 0.3 + 0.02 * t_s], 1)


def test_a_late_replay_is_found_at_its_lag_and_matches_there():
    t_rec = np.arange(0, 4.0, 0.004)
    t_new = np.arange(0.2, 3.8, 0.004)
    p_new = _path(t_new - 0.040)  # the replay runs the same path 40 ms late
    raw = path_error_mm((t_new * 1e9).astype(np.int64), p_new, (t_rec * 1e9).astype(np.int64), _path(t_rec))
    lag, err = best_lag((t_new * 1e9).astype(np.int64), p_new, (t_rec * 1e9).astype(np.int64), _path(t_rec))
    assert raw.mean() == pytest.approx(6.0, rel=0.1)  # 40 ms of 0.15 m/s
    assert lag == pytest.approx(0.040, abs=1e-9) and err.max() < 0.05


def test_a_different_path_is_not_explained_by_a_lag():
    t = np.arange(0, 3.0, 0.004)
    p_new = _path(t) + np.array([0.0, 0.0, 0.004])  # 4 mm off everywhere
    lag, err = best_lag((t * 1e9).astype(np.int64), p_new, (t * 1e9).astype(np.int64), _path(t))
    assert err.mean() > 3.9 and abs(lag) < 0.02
