"""Slow-fast control's fast layer (robot_stack.control.fast): features, the numpy corrector and its
file, and the fast loop's logic on a fake clock."""

from types import SimpleNamespace

import numpy as np
import pytest

from robot_stack.control.fast import WRENCH_SCALE, FastCorrector, FastLayer, WrenchWindow, fast_features

K = 5
N_IN = 6 * K + 1


def _linear(gain_z: float, bias=(0.0, 0.0, 0.0), max_m: float = 0.03, contact_n: float = 0.5) -> FastCorrector:
    """A one-layer corrector: vz = gain_z * (newest fz) m/s, plus a bias (m/s)."""
    w = np.zeros((3, N_IN))
    w[2, 6 * (K - 1) + 2] = gain_z * WRENCH_SCALE[2]  # the newest sample's fz feature is fz / 10
    return FastCorrector(
        [(w, np.asarray(bias, float))], np.zeros(N_IN), np.ones(N_IN), np.ones(3), K, 50.0, max_m, contact_n
    )


def _state(t_ns, fz, tcp=(0.5, 0.0, 0.06)):
    return SimpleNamespace(
        stamp_ns=t_ns, ee_pose=np.r_[tcp, 1.0, 0, 0, 0], gripper_width=0.0, wrench=np.r_[0, 0, fz, 0, 0, 0.0]
    )


def test_features_layout_and_scale():
    w = np.arange(K * 6, dtype=float).reshape(K, 6)
    x = fast_features(w, 0.085)
    assert x.shape == (N_IN,) and x.dtype == np.float32
    np.testing.assert_allclose(x[:6], w[0] / WRENCH_SCALE, rtol=1e-6)  # oldest first
    np.testing.assert_allclose(x[-7:-1], w[-1] / WRENCH_SCALE, rtol=1e-6)
    assert x[-1] == pytest.approx(0.85)  # 10 x width


def test_corrector_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    fc = FastCorrector(
        [(rng.normal(size=(16, N_IN)), rng.normal(size=16)), (rng.normal(size=(3, 16)), rng.normal(size=3))],
        rng.normal(size=N_IN),
        rng.uniform(0.5, 2, N_IN),
        np.full(3, 0.002),
        K,
        50.0,
        0.03,
        1.5,
    )
    back = FastCorrector.load(fc.save(tmp_path / "fast.safetensors"))
    assert (back.window, back.rate_hz, back.max_correction_m, back.contact_n) == (K, 50.0, 0.03, 1.5)
    for _ in range(5):
        x = rng.normal(size=N_IN).astype(np.float32)
        np.testing.assert_allclose(back(x), fc(x), atol=1e-6)  # float32 storage


def test_a_fast_layer_file_with_nan_weights_is_refused(tmp_path):
    fc = _linear(0.001)
    fc.weights[0][0][2, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        FastCorrector.load(fc.save(tmp_path / "nan.safetensors"))


def test_loading_a_policy_checkpoint_as_a_fast_layer_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "policy.safetensors"), metadata={"config": "{}"})
    with pytest.raises(ValueError, match="not a fast-corrector file"):
        FastCorrector.load(tmp_path / "policy.safetensors")


def test_window_keeps_the_newest_k():
    win = WrenchWindow(3)
    for i in range(5):
        win.push(np.full(6, i))
    assert win.ready and win.array()[:, 0].tolist() == [2, 3, 4]


def _plan(t0):
    """10 Hz waypoints going down 1 cm per step, gripper closed."""
    stamps = t0 + np.arange(8) * 100_000_000
    plan = np.zeros((8, 8))
    plan[:, 0], plan[:, 2], plan[:, 6], plan[:, 7] = 0.5, 0.10 - 0.01 * np.arange(8), 1.0, 0.0
    return stamps, plan


def test_fast_tick_integrates_the_correction_in_contact_and_shifts_the_plan():
    """The corrector says vz = 1 mm/s per N of push. With 4 N felt, each tick (20 ms) after the
    window fills adds 0.08 mm up; the schedule sent is the plan from one fast period ahead,
    shifted by the correction, and the slow side's schedules carry the same shift."""
    layer = FastLayer(_linear(0.001), lookahead_s=0.35)
    t0 = 10_000_000_000
    stamps, plan = _plan(t0)
    outs = []
    for i in range(K + 9):
        t = t0 + i * 20_000_000
        outs.append(layer.tick(t, _state(t - 1_000_000, 4.0), stamps, plan))
    assert all(o is None for o in outs[: K - 1]) and all(o is not None for o in outs[K - 1 :])
    assert layer.correction[2] == pytest.approx(10 * 0.004 * 0.02) and layer.stats["corrections"] == 10
    t = t0 + (K + 8) * 20_000_000
    o_t, o_a = outs[-1]
    assert o_t[0] == t + 20_000_000 and np.all(np.diff(o_t) > 0) and o_t[-1] <= t + 350_000_000
    c = layer.correction[2]
    assert o_a[0, 2] == pytest.approx(np.interp(o_t[0], stamps, plan[:, 2]) + c)
    np.testing.assert_allclose(o_a[1:, 2], plan[np.isin(stamps, o_t[1:]), 2] + c)
    np.testing.assert_allclose(o_a[:, 6:], plan[: len(o_a), 6:])  # orientation and gripper untouched
    np.testing.assert_allclose(layer.shift(plan)[:, 2], plan[:, 2] + c)


def test_out_of_contact_the_correction_decays_and_is_clipped_in_it():
    layer = FastLayer(_linear(0.0, bias=(0, 0, 1.0), max_m=0.01), release_s=0.3)  # 1 m/s: clipped at once
    t0 = 1_000_000_000
    stamps, plan = _plan(t0)
    for i in range(K + 2):
        layer.tick(t0 + i * 20_000_000, _state(t0 + i * 20_000_000, 5.0), stamps, plan)
    assert np.linalg.norm(layer.correction) == pytest.approx(0.01)
    t = t0 + (K + 2) * 20_000_000
    for i in range(15):  # 0.3 s without contact: one time constant
        layer.tick(t + i * 20_000_000, _state(t + i * 20_000_000, 0.1), stamps, plan)
    assert layer.correction[2] == pytest.approx(0.01 * np.exp(-1.0), rel=1e-6)


def test_stale_or_missing_wrench_corrects_nothing_new():
    layer = FastLayer(_linear(0.0, bias=(0, 0, 0.5)), max_state_age_s=0.05)
    t0 = 1_000_000_000
    stamps, plan = _plan(t0)
    for i in range(K):
        layer.tick(t0 + i * 20_000_000, _state(t0 + i * 20_000_000, 10.0), stamps, plan)
    assert layer.correction[2] == pytest.approx(0.01)
    t = t0 + K * 20_000_000
    assert layer.tick(t, _state(t - 200_000_000, 50.0), stamps, plan) is None  # 200 ms old
    assert layer.correction[2] == pytest.approx(0.005) and layer.stats["stale_states"] == 1  # decays
    no = SimpleNamespace(stamp_ns=t, ee_pose=np.r_[0.5, 0, 0.06, 1, 0, 0, 0], gripper_width=0.0, wrench=None)
    assert layer.tick(t, no, stamps, plan) is None and layer.stats["no_wrench"] == 1
    layer.reset()
    assert not layer.window.ready and np.all(layer.correction == 0)
