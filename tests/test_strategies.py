"""Execution strategies on a fake clock: each test pins behaviour that tells one strategy from the
others (request times, executed actions, averaged values, frozen prefix), so swapping one strategy
for another fails here."""

import typing

import numpy as np
import pytest

from robot_stack.control.interpolation import Trajectory
from robot_stack.control.strategies import (
    STRATEGIES,
    AsyncStrategy,
    CommittedPlan,
    EnsembleStrategy,
    RTCStrategy,
    SyncStrategy,
)

MS = 1_000_000
DT = 100 * MS  # 10 Hz control
H, S = 16, 8


def chunk(value_fn, h=H):
    """(h, 8) actions: x = value_fn(i), unit quaternion, gripper open."""
    a = np.zeros((h, 8))
    a[:, 0] = [value_fn(i) for i in range(h)]
    a[:, 6] = 1.0
    a[:, 7] = 1.0
    return a


def test_registry_matches_the_controller_config():
    from robot_stack.nodes.controller import ControllerParams

    allowed = typing.get_args(ControllerParams.model_fields["strategy"].annotation)
    assert set(STRATEGIES) == set(allowed)


def test_sync_requests_d_steps_before_the_plan_ends_and_no_earlier():
    st, plan = SyncStrategy(DT, execute_horizon=S), CommittedPlan(8, DT // 2)
    assert st.request_due(0, plan, delay_steps=2)  # nothing planned: request at once
    st.request_sent(0)
    end = 10_000 * MS
    plan.merge(np.array([end - DT, end]), chunk(lambda i: 0.0, 2), now_ns=0)
    # d = 2 steps: due exactly 200 ms before the last planned action, not a nanosecond earlier
    assert not st.request_due(end - 2 * DT - 1, plan, delay_steps=2)
    assert st.request_due(end - 2 * DT, plan, delay_steps=2)
    assert st.request_due(end - 3 * DT, plan, delay_steps=3)  # d = 3: due 300 ms before
    # async does not wait for the plan to run out: due one control period after its last request
    a = AsyncStrategy(DT)
    a.request_sent(0)
    assert not a.request_due(DT - 1, plan, 2) and a.request_due(DT, plan, 2)
    assert not st.request_due(DT, plan, 2)  # (sync at the same moment is not)


def test_sync_executes_s_actions_async_every_fresh_one():
    acts = chunk(lambda i: 0.01 * i)
    t_obs, arrival = 10_000 * MS, 10_085 * MS  # docs/design.md's worked example
    sync = SyncStrategy(DT, exec_latency_ns=10 * MS, execute_horizon=S).on_chunk(acts, t_obs, arrival, DT)
    asyn = AsyncStrategy(DT, exec_latency_ns=10 * MS, execute_horizon=S).on_chunk(acts, t_obs, arrival, DT)
    assert sync.first_index == 1 and len(sync.actions) == S  # actions 1..8
    np.testing.assert_array_equal(sync.stamps_ns, t_obs + np.arange(1, 9) * DT)
    assert asyn.first_index == 1 and len(asyn.actions) == H - 1  # actions 1..15
    assert sync.dropped == asyn.dropped == 1


def test_ensemble_averages_overlapping_chunks_where_async_takes_the_newest():
    m = 0.01
    ens = EnsembleStrategy(DT, m=m, steps=4)
    t0 = 10_000 * MS
    assert ens.on_chunk(chunk(lambda i: 0.0), t0, t0 + 50 * MS, DT) is None  # sent from the ticks
    assert ens.on_chunk(chunk(lambda i: 1.0), t0 + DT, t0 + DT + 50 * MS, DT) is None
    sched = ens.on_tick(t0 + DT + 60 * MS)
    np.testing.assert_array_equal(sched.stamps_ns, t0 + np.arange(2, 6) * DT)  # next 4 grid steps
    w_old, w_new = 1.0, np.exp(-m)  # i = 0 for the oldest prediction
    np.testing.assert_allclose(sched.actions[:, 0], w_new / (w_old + w_new), rtol=1e-12)  # 0.4975, not 1.0
    # async executes the newest chunk as it is
    a = AsyncStrategy(DT).on_chunk(chunk(lambda i: 1.0), t0 + DT, t0 + DT + 50 * MS, DT)
    np.testing.assert_array_equal(a.actions[:, 0], 1.0)
    assert AsyncStrategy(DT).on_tick(t0) is None
    ens.reset()
    assert ens.on_tick(t0 + DT + 60 * MS) is None


def test_rtc_sends_the_overlap_with_d_frozen_and_async_sends_none():
    plan = CommittedPlan(8, DT // 2)
    t0 = 10_000 * MS
    committed = chunk(lambda i: 0.5 + 0.01 * i, 10)
    plan.merge(t0 + np.arange(10) * DT, committed, now_ns=t0)
    t_obs = t0 + 3 * DT + 2 * MS  # the next observation, 2 ms off the grid
    rtc = RTCStrategy(DT)
    rtc.on_chunk(chunk(lambda i: 0.0, H), t0, t0, DT)  # learns H = 16
    pre, frozen = rtc.request_prefix(t_obs, plan, delay_steps=3)
    # the whole overlap (the plan's steps 3..9 are the next chunk's 0..6), its first d = 3 frozen
    np.testing.assert_allclose(pre, committed[3:10], rtol=1e-6)
    assert frozen == 3
    assert AsyncStrategy(DT).request_prefix(t_obs, plan, 3) is None
    assert SyncStrategy(DT).request_prefix(t_obs, plan, 3) is None
    # the overlap stops where nothing is planned, and d never exceeds it
    pre, frozen = rtc.request_prefix(t0 + 8 * DT, plan, delay_steps=5)
    assert len(pre) == 2 and frozen == 2
    assert rtc.request_prefix(t0 + 20 * DT, plan, delay_steps=5) is None
    # the overlap is at most H long
    plan.merge(t0 + np.arange(10, 40) * DT, chunk(lambda i: 0.0, 30), now_ns=t0)
    assert len(rtc.request_prefix(t0, plan, 2)[0]) == H


def test_committed_plan_follows_the_arm_nodes_merge_rule():
    """The controller's plan and the arm's trajectory keep the same future waypoints after any
    sequence of merges (the arm also starts each merge at its current point)."""
    rng = np.random.default_rng(0)
    plan = CommittedPlan(8, DT // 2, memory_ns=0)
    traj = Trajectory("joint", 0, np.zeros(1))
    now = 0
    for _ in range(30):
        now += int(rng.integers(10, 150)) * MS
        first = now + int(rng.integers(-2, 6)) * DT // 2
        stamps = first + np.arange(int(rng.integers(1, 8))) * DT
        stamps = stamps[stamps > now]
        if not len(stamps):
            continue
        vals = rng.normal(size=len(stamps))
        plan.merge(stamps, chunk(lambda i: 0.0, len(stamps)) + np.c_[vals, np.zeros((len(vals), 7))], now)
        traj.merge(stamps, vals[:, None], now)
        future = plan.stamps_ns > now
        np.testing.assert_array_equal(plan.stamps_ns[future], traj.t[1:])
        np.testing.assert_array_equal(plan.actions[future, 0], traj.x[1:, 0])


def test_committed_plan_reports_the_switch_jump():
    plan = CommittedPlan(8, DT // 2)
    assert plan.merge(np.array([DT, 2 * DT]), chunk(lambda i: 0.0, 2), now_ns=0) is None  # nothing before
    jump = plan.merge(np.array([2 * DT + 3 * MS, 3 * DT]), chunk(lambda i: 0.004, 2), now_ns=DT)
    assert jump == pytest.approx(0.004)
    # merged as the arm merges: old waypoints before the new first one stay
    np.testing.assert_array_equal(plan.stamps_ns, [DT, 2 * DT, 2 * DT + 3 * MS, 3 * DT])


def test_committed_plan_jerk_at_a_switch():
    """Constant velocity has no jerk on any grid; a 5 mm jump at a switch on a 0.1 s grid is
    2 * 0.005 / 0.1^3 = 10 m/s^3 (third difference f3 - 3 f2 + 3 f1 - f0 = -2 jump)."""
    v = 0.05  # m/s
    plan = CommittedPlan(8, DT // 2)
    stamps = np.arange(1, 7) * DT
    plan.merge(stamps, chunk(lambda i: v * (i + 1) * 0.1, 6), now_ns=0)
    assert plan.jerk_at(3 * DT) == pytest.approx(0.0, abs=1e-9)
    # a continuation on another grid (observed 30 ms later), no jump: still no jerk
    t_new = 4 * DT + 30 * MS
    new = t_new + np.arange(3) * DT
    plan.merge(new, chunk(lambda i: v * (new[i] / 1e9), 3), now_ns=3 * DT)
    assert plan.jerk_at(t_new) == pytest.approx(0.0, abs=1e-6)
    # the same switch with a 5 mm jump on the common grid
    plan = CommittedPlan(8, DT // 2)
    plan.merge(stamps, chunk(lambda i: v * (i + 1) * 0.1, 6), now_ns=0)
    plan.merge(stamps[3:], chunk(lambda i: v * (i + 4) * 0.1 + 0.005, 3), now_ns=2 * DT)
    assert plan.jerk_at(4 * DT) == pytest.approx(10.0, rel=1e-6)
    assert plan.jerk_at(DT) is None  # no two waypoints before it


def test_rtc_refuses_a_chunk_later_than_the_prefix_it_followed_and_async_does_not():
    acts = chunk(lambda i: 0.01 * i)
    t_obs = 10_000 * MS
    arrival = t_obs + 250 * MS  # actions 0..2 are due: the first fresh one is index 3
    rtc = RTCStrategy(DT)
    late = rtc.on_chunk(acts, t_obs, arrival, DT, frozen=2)
    assert late.refused and "d = 2" in late.refused and len(late.actions) == 0
    ok = rtc.on_chunk(acts, t_obs, arrival, DT, frozen=3)
    assert ok.refused is None and ok.first_index == 3 and len(ok.actions) == H - 3
    assert rtc.on_chunk(acts, t_obs, arrival, DT, frozen=-1).refused is None  # no prefix was sent
    assert AsyncStrategy(DT).on_chunk(acts, t_obs, arrival, DT, frozen=2).refused is None


def test_rtc_keeps_d_within_s_and_h_minus_s():
    plan = CommittedPlan(8, DT // 2)
    plan.merge(np.arange(20) * DT, chunk(lambda i: 0.0, 20), now_ns=0)
    rtc = RTCStrategy(DT, execute_horizon=5)
    rtc.on_chunk(chunk(lambda i: 0.0, 8), 0, 0, DT)  # H = 8
    assert rtc.request_prefix(0, plan, delay_steps=7)[1] == 3  # d <= s = 5 and d <= H - s = 3


def test_goto_via_funnel_descends_despite_tracking_error_and_climbs_when_far():
    """The scripted reach policy skips its via point inside a funnel over it: 1 cm of horizontal
    error 3 cm below the via height still descends (a fixed 5 mm limit climbed back up and
    limit-cycled under async execution); the same error at the via height goes to the via first."""
    from robot_stack.policies.scripted import GoToPolicy

    pol = GoToPolicy(goal=(0.5, 0.05, 0.025), via=(0.5, 0.05, 0.14), speed=0.08, horizon=4)
    q = [0, 0, 0, 1.0]
    low = pol.predict({"ee_pose": np.array([[0.51, 0.05, 0.11, *q]])})
    assert np.all(np.diff(low[:, 2]) < -0.005)  # down toward the goal, ~8 mm per step
    high = GoToPolicy(goal=(0.5, 0.05, 0.025), via=(0.5, 0.05, 0.14), speed=0.08, horizon=4).predict(
        {"ee_pose": np.array([[0.51, 0.05, 0.14, *q]])}
    )
    assert abs(high[1, 2] - 0.14) < 1e-9 and high[1, 0] < 0.51  # across to the via point first
