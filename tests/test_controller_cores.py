"""The controller's pure cores, each alone: the request gate, the chunk executor, the observation
builder, teleop mixing and replay. Time is passed in; nothing here sleeps or opens a socket."""

import numpy as np
import pytest

from robot_stack.comm.messages import ActionChunk, CameraFrame, RobotState, TeleopCommand
from robot_stack.control.executor import ChunkExecutor, StageTimer
from robot_stack.control.obs_builder import ObservationBuilder
from robot_stack.control.observation import StaleStreamError
from robot_stack.control.requests import Job, RequestGate
from robot_stack.control.teleop_mix import ReplayQueue, TeleopMixer

MS = 1_000_000
DT = 100 * MS
POSE = np.array([0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- request gate
def test_the_gate_sends_one_request_at_a_time_and_only_when_ready_and_driving():
    g = RequestGate(frame_triggered=False, max_wait_ns=300 * MS)
    assert not g.decide(0, driving=True, due=True, next_ns=0, anchor=None).request  # spec not negotiated yet
    g.ready = True
    assert not g.decide(0, driving=False, due=True, next_ns=0, anchor=None).request  # teleop drives
    assert g.decide(0, driving=True, due=True, next_ns=0, anchor=None).request
    g.sent()
    assert not g.decide(1, driving=True, due=True, next_ns=0, anchor=None).request  # one in flight
    g.replied(2, None, None, DT)
    d = g.decide(3, driving=True, due=False, next_ns=50 * MS, anchor=None)
    assert not d.request and d.wake_at_ns == 3 + 5 * MS  # not due: look again in 5 ms at most


def test_the_gate_waits_for_the_anchor_cameras_next_frame_and_gives_up_at_its_deadline():
    g = RequestGate(frame_triggered=True, max_wait_ns=300 * MS)
    g.ready = True
    d = g.decide(0, driving=True, due=True, next_ns=0, anchor=("camera/wrist", 7))
    assert d.await_frame and not d.request and d.wake_at_ns == 300 * MS
    assert not g.on_frame("camera/scene", 9)  # another camera
    assert not g.on_frame("camera/wrist", 7)  # the same frame again
    assert g.on_frame("camera/wrist", 8)  # the next one: the request leaves now
    g.decide(10, driving=True, due=True, next_ns=0, anchor=("camera/wrist", 8))
    d = g.decide(300 * MS + 10, driving=True, due=True, next_ns=0, anchor=("camera/wrist", 8))
    assert d.request and d.timed_out  # the camera stalled: the request goes, assembly names the stream


def test_refusals_back_off_timeouts_retry_and_unexpected_failures_end_the_node_after_a_budget():
    g = RequestGate(frame_triggered=False, max_wait_ns=0, max_failures=3)
    g.ready = True
    g.sent()
    assert g.replied(1000, RuntimeError("refused"), "refused", DT) is None and g.backoff_until == 1000 + 200 * MS
    g.sent()
    assert g.replied(2000, TimeoutError("late"), "timeout", DT) is None and g.backoff_until == 2000
    for i in range(2):
        g.sent()
        assert g.replied(3000 + i, ValueError("bug"), None, DT) is None
    g.sent()
    why = g.replied(4000, ValueError("bug"), None, DT)
    assert why == "inference failed 3 times in a row, last: ValueError: bug"
    g.sent()
    g.replied(5000, None, None, DT)
    assert g.failures == 0  # a good reply resets the count


# ----------------------------------------------------------------------------- chunk executor
class Obs:
    def __init__(self, t_obs):
        self.t_obs_ns = t_obs
        self.times_ns = np.array([t_obs - DT, t_obs], np.int64)


def _chunk(n=16):
    a = np.tile(np.r_[POSE, 1.0], (n, 1))
    a[:, 0] += 0.01 * np.arange(n)
    return a


def test_the_executor_plans_the_worked_example_and_counts_what_it_dropped():
    """sync, dt 0.1 s, s = 8, 10 ms latency: a chunk observed at 10.000 s arriving at 10.085 s
    executes actions 1..8 (10.1 .. 10.8 s)."""
    ex = ChunkExecutor("sync", DT, 10 * MS, 8, 8, start_from_rest=False)
    t_obs, arrival = 10_000 * MS, 10_085 * MS
    sched, why = ex.on_chunk(_chunk(), t_obs, arrival, arrival, DT, 0)
    assert why is None
    np.testing.assert_array_equal(sched.stamps_ns, t_obs + np.arange(1, 9) * DT)
    np.testing.assert_allclose(sched.actions[:, 0], POSE[0] + 0.01 * np.arange(1, 9))
    assert ex.counts["dropped_actions"] == 1 and ex.counts["chunks"] == 1


def test_a_reply_is_checked_timed_and_dropped_when_stale_before_it_is_planned():
    ex = ChunkExecutor("async", DT, 10 * MS, 8, 8)
    job = Job(generation=1, window=None, t_obs_ns=0, t_assemble_ns=5 * MS, t_send_ns=6 * MS, with_prefix=False)
    bad = ActionChunk(actions=np.full((16, 8), np.nan, np.float32), inference_ns=40 * MS)
    sched, why = ex.on_reply(bad, job, 50 * MS, 50 * MS, current=True, driving=True)
    assert sched is None and why.startswith("refused (#1): actions contain NaN") and ex.counts["bad_chunks"] == 1
    good = ActionChunk(actions=_chunk().astype(np.float32), inference_ns=40 * MS)
    sched, why = ex.on_reply(good, job, 50 * MS, 50 * MS, current=False, driving=True)
    assert sched is None and ex.counts["stale_chunks"] == 1 and ex.counts["chunks"] == 0
    m = ex.metrics()
    assert m["stage_inference_p50_ms"] == pytest.approx(40.0) and m["stage_transport_p50_ms"] == pytest.approx(4.0)
    sched, why = ex.on_reply(good, job, 50 * MS, 50 * MS, current=True, driving=True)
    assert sched is not None and ex.counts["chunks"] == 1


def test_the_rtc_prefix_goes_back_in_the_policys_own_order():
    ex = ChunkExecutor("rtc", DT, 10 * MS, 4, 8)
    ex.action_order = np.array([0, 1, 2, 4, 5, 6, 3, 7])  # the policy sends qw first
    now = 10_000 * MS
    ex.committed(now + np.arange(0, 8) * DT, _chunk(8), now)
    window, with_prefix = ex.request(now + DT // 2, Obs(now), {"state": np.zeros((2, 8), np.float32)})
    assert with_prefix and window.committed_prefix is not None
    pre = np.asarray(window.committed_prefix)
    np.testing.assert_allclose(pre[:, 3], 0.0)  # qw (0 here) is first of the quaternion, as the policy names it
    np.testing.assert_allclose(pre[:, 4], 1.0)  # qx


def test_rtc_freezes_every_action_that_runs_while_the_policy_thinks_at_50_hz():
    """50 Hz, H = 50, s = 25, 10 ms execution latency, 235 ms of inference: 13 actions (indices
    0..12) are due before a chunk arrives, so d must be 13. ceil(235 / 20) = 12 froze one short, and
    RTC refused the chunk (it continued from the 13th as if it were free): 15 of 33 chunks in a
    deploy through the stack."""
    dt, lat, delay = 20 * MS, 10 * MS, 235 * MS
    ex = ChunkExecutor("rtc", dt, lat, 25, 8)
    now, refused = 10_000 * MS, 0
    for k in range(8):
        ex.committed(now + np.arange(1, 51) * dt, _chunk(50), now)
        window, with_prefix = ex.request(now, Obs(now), {"state": np.zeros((2, 8), np.float32)})
        reply = ActionChunk(request_id=window.request_id, actions=_chunk(50).astype(np.float32), dt=0.02)
        reply.prefix_frozen = window.prefix_frozen
        job = Job(0, window, now, now, now, with_prefix)
        _, why = ex.on_reply(reply, job, now + delay, now + delay, current=True, driving=True)
        refused += why is not None and "refused" in why
        if k >= 2:  # past the estimator's warm-up (its first sample is left out; d starts at 2)
            assert window.prefix_frozen == 13, k
        now += 25 * dt
    assert ex.delay.steps == 12 and ex.delay.stale_steps(lat) == 13
    assert refused <= 2 and ex.counts["refused_chunks"] == refused


def test_the_stage_timer_reports_each_stage():
    t = StageTimer(("a", "b"), maxlen=3)
    for v in (1.0, 2.0, 3.0, 10.0):
        t.add("a", v)
    m = t.metrics()
    assert m["stage_a_p50_ms"] == pytest.approx(3.0) and "stage_b_p50_ms" not in m  # the last 3 only


# ----------------------------------------------------------------------------- observation builder
def _state(t, x=0.5, source="arm"):
    m = RobotState(stamp_ns=t, q=np.zeros(7), dq=np.zeros(7), ee_pose=np.r_[x, POSE[1:]], gripper_width=0.04)
    m.source = source
    return m


def test_the_builder_makes_the_window_in_the_policys_keys_and_names_a_stale_stream():
    b = ObservationBuilder(["arm"], [], ["state", "ee_pose"], 2, DT, 300 * MS)
    states = [_state(i * 10 * MS, 0.5 + 0.001 * i) for i in range(30)]
    obs, arrays = b.build({}, states, 290 * MS)
    assert list(arrays) == ["state", "ee_pose"] and arrays["state"].shape == (2, 8)
    np.testing.assert_allclose(arrays["ee_pose"][:, 0], [0.519, 0.529], atol=1e-6)  # at 190 and 290 ms
    with pytest.raises(StaleStreamError, match="robot/state"):
        b.build({}, states, 290 * MS + 400 * MS)


def test_the_builder_lines_two_arms_up_in_action_order():
    b = ObservationBuilder(["arm_left", "arm_right"], [], ["state"], 2, DT, 300 * MS)
    states = [
        s for i in range(30) for s in (_state(i * 10 * MS, 0.4, "arm_left"), _state(i * 10 * MS, 0.6, "arm_right"))
    ]
    _, arrays = b.build({}, states, 290 * MS)
    assert arrays["state"].shape == (2, 16)
    np.testing.assert_allclose(arrays["state"][:, [0, 8]], [[0.4, 0.6], [0.4, 0.6]], atol=1e-6)
    with pytest.raises(StaleStreamError, match="arm_right"):
        b.build({}, [s for s in states if s.source == "arm_left"], 290 * MS)


def test_the_anchor_camera_is_the_one_that_holds_the_window_back():
    b = ObservationBuilder(["arm"], ["scene", "wrist"], ["state"], 2, DT, 300 * MS)
    frames = {}
    for cid, t, seq in (("scene", 100 * MS, 4), ("wrist", 80 * MS, 9)):
        f = CameraFrame(stamp_ns=t, color=np.zeros((4, 4, 3), np.uint8), K=np.eye(3), camera_id=cid)
        f.seq = seq
        frames[cid] = f
    assert b.anchor(frames.get) == ("camera/wrist", 9)
    assert b.anchor(lambda c: None) is None


# ----------------------------------------------------------------------------- teleop and replay
def _cmd(value, arm="", kind="ee_delta", t=0):
    c = TeleopCommand(kind=kind, value=np.asarray(value, float), arm=arm)
    c.stamp_ns = t
    return c


def test_teleop_deltas_add_to_each_arms_target_from_where_it_is_on_one_stamp():
    m = TeleopMixer(["arm_left", "arm_right"], lead_ns=110 * MS, timeout_ns=500 * MS)
    states = {"arm_left": _state(0, 0.4, "arm_left"), "arm_right": _state(0, 0.6, "arm_right")}
    step = m.step([_cmd([0.01, 0, 0, 0, 0, 0], "arm_right", t=1000)], states, 1000 + MS)
    stamps, actions = step.lockstep
    assert stamps.tolist() == [1000 + MS + 110 * MS]
    assert actions[0, 0] == pytest.approx(0.4) and actions[0, 8] == pytest.approx(0.61)  # left holds, right moved
    step = m.step([_cmd([0.01, 0, 0, 0, 0, 0], "arm_right", t=2000)], states, 2000 + MS)
    assert step.lockstep[1][0, 8] == pytest.approx(0.62)  # from its target, not from the state
    assert m.step([_cmd([0.01, 0, 0, 0, 0, 0], t=0)], states, 600 * MS).lockstep is None  # stale: not executed
    assert m.step([_cmd([0.01, 0, 0, 0, 0, 0], "arm_up", t=0)], states, 1).unknown_arms == {"arm_up"}


def test_a_replay_waits_for_every_arm_and_goes_out_within_its_lead():
    r = ReplayQueue(["arm_left", "arm_right"], lead_ns=1000 * MS)
    stamps = np.arange(1, 31) * 100 * MS
    assert not r.add("arm_left", stamps, np.tile(POSE, (30, 1)), None)  # the right arm's part first
    with pytest.raises(ValueError, match="differ in their stamps"):
        r.add("arm_right", stamps + 1, np.tile(POSE, (30, 1)), None)
    r.add("arm_left", stamps, np.tile(POSE, (30, 1)), None)
    assert r.add("arm_right", stamps, np.tile(POSE, (30, 1)), np.zeros(30))
    part = r.due(0)
    assert part[0].tolist() == (stamps[:10]).tolist() and part[1].shape == (10, 16)
    assert r.due(0) is None  # nothing more within the lead
    assert len(r.due(2000 * MS)[0]) == 20  # up to 3 s: the rest
    with pytest.raises(ValueError, match=r"\(N, 7\)"):
        r.add("arm_left", stamps, np.zeros((30, 6)), None)


# ----------------------------------------------------------------------------- built from a setup
def _setup(**ctl):
    return {
        "name": "cores",
        "nodes": {
            "left": {"kind": "arm", "params": {"driver": {"type": "ideal"}}},
            "right": {"kind": "arm", "params": {"driver": {"type": "ideal"}}},
            "controller": {"kind": "controller", "params": {"policy_endpoint": "tcp://127.0.0.1:5999", **ctl}},
        },
    }


@pytest.mark.parametrize("strategy", ["sync", "async", "ensemble", "rtc"])
def test_build_cores_makes_what_the_params_say(strategy):
    from robot_stack.nodes.controller_cores import build_cores
    from robot_stack.runtime.config import config_from_dict

    cfg = config_from_dict(
        _setup(arms=["left", "right"], rate_hz=20, strategy=strategy, exec_latency_s=0.03, obs_keys=["state"])
    )
    c = build_cores(cfg.nodes["controller"].typed, cfg, max_failures=3)
    assert c.arm_names == ["left", "right"] and c.dt_ns == 50 * MS and c.has_policy and c.fast is None
    assert c.exec.strategy.name == strategy and c.modes.n_arms == 2 and c.gate.max_failures == 3
    assert c.gate.frame_triggered == (strategy != "sync")  # request_on_frame by default, never for sync
    assert c.teleop_mix is not None and c.setup.arms == ["left", "right"] and c.setup.action_dim == 16


def test_build_cores_refuses_a_setup_that_does_not_fit():
    from robot_stack.nodes.controller_cores import build_cores
    from robot_stack.runtime.config import ConfigError, config_from_dict

    cfg = config_from_dict(_setup(arms=["left", "left"]))
    with pytest.raises(ConfigError, match="named twice"):
        build_cores(cfg.nodes["controller"].typed, cfg)


def test_an_outage_backs_off_logs_its_start_summary_and_end_once_and_ends_the_node_when_long(caplog):
    """Refusals back off 200, 400, 800, 1600, 2000 ms; 100 failed requests over 12 s log one start,
    two summaries (every 5 s), and end the node after 10 s by name, once the policy has answered
    (before its first answer a loading policy is not lost); a good reply logs the end once."""
    import logging

    g = RequestGate(frame_triggered=False, max_wait_ns=0, lost_after_ns=10_000 * MS)
    g.ready = True
    waits = []
    for i in range(6):
        g.sent()
        assert g.replied(i * MS, ConnectionRefusedError("refused"), "refused", DT) is None
        waits.append((g.backoff_until - i * MS) // MS)
    assert waits == [200, 400, 800, 1600, 2000, 2000]
    g.sent()
    assert g.replied(20_000 * MS, TimeoutError("late"), "timeout", DT) is None  # never answered: not lost
    g.sent()
    g.replied(20_001 * MS, None, None, DT)
    assert g.outage_since is None and g.answered
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robot_stack.control.requests"):
        why = None
        for k in range(100):  # a request every 120 ms: 12 s
            g.sent()
            r = g.replied(30_000 * MS + k * 120 * MS, TimeoutError("late"), "timeout", DT)
            why = why or r
        g.sent()
        g.replied(50_000 * MS, None, None, DT)
    msgs = [r.getMessage() for r in caplog.records]
    assert why is not None and why.startswith("policy unreachable for 10.1 s (85 failed requests")
    assert sum(m.startswith("inference failed") for m in msgs) == 1
    assert sum(m.startswith("inference still failing") for m in msgs) == 2
    assert sum(m.startswith("policy answering again after 100 failed requests in 20.0 s") for m in msgs) == 1
