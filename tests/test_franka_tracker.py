"""The Franka driver's jerk-limited tracker: limits held, no overshoot, smooth start (pure logic)."""

import numpy as np

from robot_stack.drivers.franka import JerkLimitedTracker


def run(target, steps=3000, dt=1e-3, **kw):
    t = JerkLimitedTracker(np.zeros(2), **kw)
    return np.array([t.step(np.asarray(target, float), dt).copy() for _ in range(steps)])


def test_step_respects_limits_without_overshoot():
    q = run([1.0, -0.3])
    v = np.diff(q, axis=0) / 1e-3
    a = np.diff(v, axis=0) / 1e-3
    j = np.diff(a, axis=0) / 1e-3
    assert np.abs(v).max() <= 1.0 + 1e-9 and np.abs(a).max() <= 4.0 + 1e-6 and np.abs(j).max() <= 400.0 + 1e-3
    assert q[:, 0].max() < 1.003 and q[:, 1].min() > -0.303  # overshoot below 3 mrad
    np.testing.assert_allclose(q[-1], [1.0, -0.3], atol=1e-6)


def test_first_commands_are_continuous():
    q = run([0.5, 0.5], steps=5)
    assert np.all(np.abs(q) < 2e-5)  # jerk-limited start: micro-radians in the first milliseconds
    assert np.all(np.diff(q[:, 0]) > 0)


def test_tracks_a_moving_target_with_bounded_lag():
    t = JerkLimitedTracker(np.zeros(1))
    errs = []
    for k in range(4000):  # targets at the 500 Hz servo rate, 0.47 rad/s peak (a brisk teleop motion)
        target = 0.3 * np.sin(2 * np.pi * 0.25 * (k // 2) * 2e-3)
        errs.append(abs(t.step(np.array([target]), 1e-3)[0] - target))
    assert max(errs[1000:]) < 0.005  # velocity feed-forward: a few mrad, not v / gain
