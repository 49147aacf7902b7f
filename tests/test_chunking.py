"""Chunk timing math pinned with exact values (docs/design.md worked example)."""

import math

import numpy as np
import pytest

from robot_stack.control.chunking import (
    DelayEstimator,
    TemporalEnsembler,
    action_times_ns,
    committed_prefix,
    plan_chunk,
    rtc_guidance_weights,
)

MS = 1_000_000
S = 1_000 * MS
DT = 100 * MS


def chunk(H=16, D=2):
    return np.arange(H * D, dtype=np.float32).reshape(H, D)


def test_action_stamps():
    assert list(action_times_ns(10 * S, 4, DT, offset=1)) == [10_100 * MS, 10_200 * MS, 10_300 * MS, 10_400 * MS]


def test_design_worked_example_on_time():
    p = plan_chunk(chunk(), t_obs_ns=10 * S, arrival_ns=10_085 * MS, dt_ns=DT, exec_latency_ns=10 * MS, execute=8)
    assert p.first_index == 1 and p.dropped == 1 and p.late_steps == 0 and not p.over_budget
    assert list(p.stamps_ns) == [(10_000 + 100 * i) * MS for i in range(1, 9)]  # 10.1 .. 10.8 s
    assert np.array_equal(p.actions, chunk()[1:9])


def test_design_worked_example_late_by_9_steps():
    p = plan_chunk(chunk(), t_obs_ns=10 * S, arrival_ns=10_900 * MS, dt_ns=DT, exec_latency_ns=10 * MS, execute=8)
    assert p.first_index == 10 and p.late_steps == 9 and not p.over_budget
    assert len(p.actions) == 6  # only 10..15 run
    assert p.stamps_ns[0] == 11 * S


def test_all_stale_is_over_budget():
    p = plan_chunk(chunk(), t_obs_ns=10 * S, arrival_ns=11_600 * MS, dt_ns=DT, exec_latency_ns=0)
    assert p.over_budget and p.first_index == 16 and len(p.actions) == 0 and p.late_steps == 15


def test_boundary_action_exactly_at_cutoff_is_dropped():
    # action 1 at 10.1 s; arrival 10.09 + 10 ms latency = 10.1 s exactly: "at or before" -> dropped
    p = plan_chunk(chunk(), t_obs_ns=10 * S, arrival_ns=10_090 * MS, dt_ns=DT, exec_latency_ns=10 * MS)
    assert p.first_index == 2


def test_offset_shifts_stamps_and_lateness():
    p = plan_chunk(chunk(), t_obs_ns=10 * S, arrival_ns=10_050 * MS, dt_ns=DT, offset=1)
    assert p.first_index == 0 and p.late_steps == 0 and p.stamps_ns[0] == 10_100 * MS


def test_temporal_ensembling_weights_exact():
    te = TemporalEnsembler(DT, m=0.5)
    te.add(10 * S, np.full((4, 1), 1.0))  # predicts 10.0 .. 10.3
    te.add(10_100 * MS, np.full((4, 1), 3.0))  # predicts 10.1 .. 10.4
    te.add(10_200 * MS, np.full((4, 1), 5.0))  # predicts 10.2 .. 10.5
    w = np.exp(-0.5 * np.arange(3))
    w /= w.sum()
    assert te.weights(3) == pytest.approx(w)
    assert te.action_at(10_200 * MS)[0] == pytest.approx(w @ [1.0, 3.0, 5.0])
    assert te.action_at(10_000 * MS)[0] == pytest.approx(1.0)  # one prediction only
    assert te.action_at(10_480 * MS)[0] == pytest.approx(5.0)  # within dt/2 of 10.5 s: newest only
    assert te.action_at(11 * S) is None
    te.prune(10_350 * MS)
    assert te.action_at(10_300 * MS)[0] == pytest.approx((w[:2] / w[:2].sum()) @ [3.0, 5.0])


def test_committed_prefix_freezes_first_d_actions():
    stamps = action_times_ns(10 * S, 8, DT)  # committed schedule 10.0 .. 10.7 s
    acts = np.arange(16, dtype=np.float64).reshape(8, 2)
    pre = committed_prefix(stamps, acts, t_obs_ns=10_300 * MS, dt_ns=DT, d=3)
    assert pre.dtype == np.float32 and np.array_equal(pre, acts[3:6])
    # beyond the committed schedule the prefix stops
    pre = committed_prefix(stamps, acts, t_obs_ns=10_600 * MS, dt_ns=DT, d=4)
    assert np.array_equal(pre, acts[6:8])
    assert committed_prefix(stamps[:0], acts[:0], 0, DT, 3).shape == (0, 2)


def test_rtc_guidance_weights_exact():
    w = rtc_guidance_weights(horizon=8, d=2, s=3)
    # i < 2: 1; 2 <= i < 5: c = (5 - i) / 4; i >= 5: 0
    expected = [1, 1] + [c * (math.exp(c) - 1) / (math.e - 1) for c in (3 / 4, 2 / 4, 1 / 4)] + [0, 0, 0]
    assert w == pytest.approx(expected)
    with pytest.raises(ValueError):
        rtc_guidance_weights(8, 9, 1)


def test_delay_estimator_quantile_in_steps():
    est = DelayEstimator(DT, quantile=0.9, initial_steps=2)
    assert est.steps == 2
    for ms in [50, 60, 70, 80, 90, 110, 120, 130, 140, 250]:
        est.add(ms * MS)
    # 90th percentile of the delays = 151 ms -> 2 steps of 100 ms
    assert float(np.quantile([50, 60, 70, 80, 90, 110, 120, 130, 140, 250], 0.9)) == pytest.approx(151.0)
    assert est.steps == 2
    for _ in range(50):
        est.add(230 * MS)
    assert est.steps == 3


def test_chunk_anchor_from_rest_is_the_arrival():
    from robot_stack.control.chunking import chunk_anchor_ns

    ms = 1_000_000
    # nothing planned (episode start): the chunk is stamped from its arrival, so plan_chunk keeps action 1 on
    assert chunk_anchor_ns(1000 * ms, 1800 * ms, None) == 1800 * ms
    p = plan_chunk(np.arange(16.0)[:, None], chunk_anchor_ns(1000 * ms, 1800 * ms, None), 1800 * ms, 100 * ms)
    assert p.first_index == 1 and p.late_steps == 0
    # a plan that ended before the observation (a hold, an over-budget stop): at rest too
    assert chunk_anchor_ns(1000 * ms, 1800 * ms, 900 * ms) == 1800 * ms
    # a plan ran since the observation: the arm moved, latency compensation stays (8 actions dropped)
    assert chunk_anchor_ns(1000 * ms, 1800 * ms, 1500 * ms) == 1000 * ms
    assert plan_chunk(np.arange(16.0)[:, None], 1000 * ms, 1800 * ms, 100 * ms).first_index == 9


def test_edge_padded_repeats_the_last_real_action_and_refuses_bad_prefixes():
    from robot_stack.control.chunking import edge_padded

    pre = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = edge_padded(pre, 5)
    assert out.shape == (5, 2) and np.array_equal(out[:2], pre) and np.all(out[2:] == [3.0, 4.0])
    with pytest.raises(ValueError, match="1 <= k <= H"):
        edge_padded(np.zeros((0, 2)), 5)
    with pytest.raises(ValueError, match="1 <= k <= H"):
        edge_padded(np.zeros((6, 2)), 5)


def test_the_first_inference_is_kept_out_of_the_delay_estimate():
    """A 2 s warm-up inference followed by 60 ms ones: d is 1 step at 10 Hz, not 20 (lerobot#4223);
    with the warm-up counted (warmup=0) the same samples give 10 or more."""
    from robot_stack.control.chunking import DelayEstimator

    dt = 100_000_000
    est, naive = DelayEstimator(dt, initial_steps=2), DelayEstimator(dt, initial_steps=2, warmup=0)
    for e in (est, naive):
        e.add(2_000_000_000)
        assert e.steps in (2, 20)
        for _ in range(5):
            e.add(60_000_000)
    assert est.steps == 1 and est.warmup_left_out == 1
    assert naive.steps >= 10  # the 0.9 quantile of six samples still sits near the warm-up


def test_action_order_matches_by_name_and_refuses_other_names():
    from robot_stack.control.chunking import action_order
    from robot_stack.control.features import ACTION_NAMES, action_names

    assert action_order(ACTION_NAMES, ACTION_NAMES) is None
    pol = ["x", "y", "z", "qw", "qx", "qy", "qz", "gripper_open"]
    order = action_order(pol, ACTION_NAMES)
    chunk = np.array([[1, 2, 3, 0.5, 0.1, 0.2, 0.3, 1.0]])  # in the policy's order
    np.testing.assert_array_equal(chunk[:, order], [[1, 2, 3, 0.1, 0.2, 0.3, 0.5, 1.0]])
    two = action_names(["arm_left", "arm_right"])
    assert two[:2] == ["left_x", "left_y"] and two[8] == "right_x"
    swapped = two[8:] + two[:8]  # the other arm first
    assert list(action_order(swapped, two)) == list(range(8, 16)) + list(range(8))
    with pytest.raises(ValueError, match=r"missing \['gripper_open'\], unknown \['gripper'\]"):
        action_order(list(ACTION_NAMES[:7]) + ["gripper"], ACTION_NAMES)
    with pytest.raises(ValueError, match="twice"):
        action_order(["x", "x"], ["x", "y"])


def test_the_frozen_prefix_covers_the_tail_of_the_delays():
    """RTC refuses a chunk that arrives after the d it followed, so d covers the delays' tail (the
    98th percentile), while the request timing keeps the 90th: 1 delay in 10 at 275 ms, the rest
    at 235 ms, 50 Hz, 10 ms of execution latency."""
    est = DelayEstimator(20 * MS, window=50, warmup=0)
    for i in range(50):
        est.add((275 if i % 10 == 0 else 235) * MS)
    assert est.steps == 12  # ceil(q90 = 239 ms / 20 ms)
    assert est.stale_steps(10 * MS) == 15  # floor((275 + 10) / 20) + 1: every arrival's stale actions
