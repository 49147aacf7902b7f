"""The controller node in-process: on the fake context and a fake clock, with a fake policy server
on the in-memory bus and the arm's state published by the test. No processes, no sleeping."""

import numpy as np
import pytest

from robot_stack.comm.messages import (
    ActionChunk,
    ArmControl,
    EpisodeEvent,
    ObservationWindow,
    RobotState,
    SpecRequest,
    TeleopCommand,
    WaypointSchedule,
)
from robot_stack.control.features import ACTION_NAMES
from robot_stack.policies.base import PolicyMetadata
from robot_stack.policies.serving import spec_message
from robot_stack.testing import run_workers

ENDPOINT = "tcp://127.0.0.1:5999"
HOME = np.array([0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])


def setup(strategy="sync", **ctl):
    params = {
        "policy_endpoint": ENDPOINT,
        "teleop": "teleop",
        "rate_hz": 10,
        "strategy": strategy,
        "execute_horizon": 4,
        "obs_keys": ["state"],
        "obs_horizon": 2,
        "spec_timeout_s": 1.0,
        **ctl,
    }
    return {
        "name": "ctl_test",
        "nodes": {
            "arm": {"kind": "arm", "params": {"driver": {"type": "ideal"}}},
            "teleop": {"kind": "teleop", "params": {"device": {"type": "keyboard"}}},
            "controller": {"kind": "controller", "params": params},
        },
    }


class FakePolicy:
    """Answers spec and inference requests: a chunk of H poses stepping +x from the newest state."""

    def __init__(self, action_dim=8, horizon=8, on_infer=None, names=None):
        names = (ACTION_NAMES if action_dim == 8 else ()) if names is None else names
        self.md = PolicyMetadata(
            obs_shapes={"state": ((8,), "<f4")},
            obs_horizon=2,
            horizon=horizon,
            action_dim=action_dim,
            action_space="ee_pose+gripper",
            dt=0.1,
            offset=0,
            supports_prefix=True,
            norm_stats={},
            points={},
            action_names=tuple(names),
        )
        self.order = [ACTION_NAMES.index(n) for n in names] if set(names) == set(ACTION_NAMES) else list(range(8))
        self.requests: list[ObservationWindow] = []
        self.on_infer = on_infer

    def __call__(self, topic, msg):
        if isinstance(msg, SpecRequest):
            return spec_message(self.md)
        self.requests.append(msg)
        if self.on_infer is not None:
            self.on_infer()
        state = np.asarray(msg.obs["state"])[-1]
        acts = np.tile(np.r_[state[:7], 1.0], (self.md.horizon, 1))
        acts[:, 0] += 0.01 * np.arange(1, self.md.horizon + 1)
        acts = acts[:, self.order]  # in the order its names say
        return ActionChunk(request_id=msg.request_id, actions=acts.astype(np.float32), dt=0.1, inference_ns=5_000_000)


class Rig:
    """The controller, its arm's input and the publishers the test drives it with."""

    def __init__(self, node_builder, fake_bus, fake_clock, policy=None, **kw):
        self.clock, self.bus = fake_clock, fake_bus
        self.policy = policy or FakePolicy()
        fake_bus.handlers[ENDPOINT] = self.policy
        self.arm_rx = fake_bus.receiver("arm")  # the arm node's input: what the controller sends
        self.arm_pub = fake_bus.publisher("arm")
        self.teleop_pub = fake_bus.publisher("teleop")
        self.ctl_tx = fake_bus.sender("controller", "session")
        self.pose, self.refused = HOME, 0  # what the arm's states say: TCP pose, schedules refused
        self.state(mode="hold")
        self.ctl = node_builder(setup(**kw), "controller")
        self.teleop_seq = 0

    def state(self, pose=None, mode="track"):
        pose = self.pose if pose is None else pose
        self.arm_pub.publish(
            RobotState.TOPIC,
            RobotState(
                q=np.zeros(7),
                dq=np.zeros(7),
                ee_pose=np.asarray(pose, float),
                gripper_width=0.08,
                mode=mode,
                schedules_refused=self.refused,
            ),
        )

    def tick(self, n=1, mode="track"):
        """n control steps of 100 ms, the arm's state published every 20 ms between them."""
        for _ in range(n):
            for _ in range(5):
                self.clock.advance(0.02)
                self.state(mode=mode)
            self.ctl.step()

    def teleop(self, buttons=(), value=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0), kind="ee_delta", arm=""):
        self.teleop_pub.publish(
            TeleopCommand.TOPIC,
            TeleopCommand(kind=kind, value=np.asarray(value, float), buttons=list(buttons), arm=arm),
        )

    def sent(self):
        """Everything the controller sent the arm since the last call: (topic, message)."""
        out = []
        while (m := self.arm_rx.recv()) is not None:
            out.append(m)
        return out

    def schedules(self):
        return [m for t, m in self.sent() if isinstance(m, WaypointSchedule)]


@pytest.fixture
def rig(node_builder, fake_bus, fake_clock):
    return lambda **kw: Rig(node_builder, fake_bus, fake_clock, **kw)


def test_a_policy_chunk_becomes_a_timed_schedule_for_the_arm(rig):
    r = rig()
    r.tick(2)
    run_workers(r.ctl)  # spec check
    run_workers(r.ctl)  # first request
    sched = r.schedules()
    assert len(sched) == 1 and sched[0].origin == "policy"
    s = sched[0]
    assert np.all(np.diff(s.stamps_ns) == 100_000_000)  # on the policy's dt
    assert s.positions[0, 0] > HOME[0] and np.all(np.diff(s.positions[:, 0]) > 0)
    assert len(r.policy.requests) == 1 and np.asarray(r.policy.requests[0].obs["state"]).shape == (2, 8)


def test_intervention_hands_the_arm_to_teleop_and_release_hands_it_back(rig):
    r = rig()
    r.tick(2)
    run_workers(r.ctl)
    run_workers(r.ctl)
    assert [s.origin for s in r.schedules()] == ["policy"]
    r.teleop(buttons=["intervene"])
    r.tick()
    assert r.ctl.modes.mode == "teleop" and r.ctl.metrics()["interventions"] == 1
    n_req = len(r.policy.requests)
    run_workers(r.ctl)  # the policy is not asked while teleop drives
    assert len(r.policy.requests) == n_req
    r.teleop(value=[0.01, 0, 0, 0, 0, 0])
    r.tick()
    teleop = r.schedules()
    assert teleop and all(s.origin == "teleop" for s in teleop)
    assert teleop[-1].positions[0, 0] == pytest.approx(HOME[0] + 0.01, abs=1e-6)
    r.teleop(buttons=["release"])
    r.tick()
    assert r.ctl.modes.mode == "policy"
    r.tick(4)  # sync: the next request is due when the (dropped) plan would have ended
    run_workers(r.ctl)
    assert [s.origin for s in r.schedules()][-1:] == ["policy"]


def test_a_chunk_in_flight_when_the_episode_ends_is_dropped_on_arrival(rig):
    holder = {}

    def episode_ends_while_thinking():
        holder["rig"].ctl_tx.send(EpisodeEvent.TOPIC, EpisodeEvent(kind="stop"))
        holder["rig"].ctl.step()

    r = holder["rig"] = rig(policy=FakePolicy(on_infer=episode_ends_while_thinking))
    r.tick(2)
    run_workers(r.ctl)  # spec
    run_workers(r.ctl)
    assert r.schedules() == []
    m = r.ctl.metrics()
    assert m["stale_chunks"] == 1 and m["chunks"] == 0 and r.ctl.modes.mode == "idle"


def test_a_policy_whose_spec_does_not_match_the_arms_is_refused_at_start(rig):
    r = rig(policy=FakePolicy(action_dim=16))
    r.tick()
    run_workers(r.ctl)
    assert r.ctl._fatal is not None and "does not match" in r.ctl._fatal and "16" in r.ctl._fatal
    assert r.policy.requests == []


def test_bad_chunks_are_refused_and_counted_never_sent(rig):
    class NanPolicy(FakePolicy):
        def __call__(self, topic, msg):
            reply = super().__call__(topic, msg)
            if isinstance(reply, ActionChunk):
                a = np.array(reply.actions)
                a[3, 1] = np.nan
                reply.actions = a
            return reply

    r = rig(policy=NanPolicy())
    r.tick(2)
    run_workers(r.ctl)
    run_workers(r.ctl)
    assert r.schedules() == [] and r.ctl.metrics()["bad_chunks"] == 1


def test_the_teleop_estop_button_stops_every_arm(rig):
    r = rig()
    r.tick(2)
    r.teleop(buttons=["estop"])
    r.tick()
    controls = [m for t, m in r.sent() if isinstance(m, ArmControl)]
    assert [c.kind for c in controls] == ["estop"]


def test_a_replayed_schedule_goes_to_the_arm_piecewise_as_origin_replay(rig):
    r = rig(source="external")
    t0 = r.clock.now_ns()
    stamps = t0 + np.arange(1, 31) * 100_000_000  # 3 s of waypoints
    poses = np.tile(HOME, (30, 1))
    r.ctl_tx.send(WaypointSchedule.TOPIC, WaypointSchedule(stamps_ns=stamps, positions=poses, space="ee"))
    r.tick()
    first = r.schedules()
    assert first and all(s.origin == "replay" for s in first)
    assert first[-1].stamps_ns[-1] <= r.clock.now_ns() + 1_000_000_000  # at most 1 s ahead, not all 3 s
    r.tick(30)
    rest = r.schedules()
    sent = np.concatenate([s.stamps_ns for s in first + rest])
    assert np.array_equal(sent, stamps)  # every waypoint once, in order


def test_teleop_drives_two_arms_each_with_its_own_target(node_builder, fake_bus, fake_clock):
    cfg = {
        "name": "bi",
        "nodes": {
            "arm_left": {"kind": "arm", "params": {"driver": {"type": "ideal"}}},
            "arm_right": {"kind": "arm", "params": {"driver": {"type": "ideal"}}},
            "teleop": {"kind": "teleop", "params": {"device": {"type": "keyboard"}}},
            "controller": {
                "kind": "controller",
                "params": {"arms": ["arm_left", "arm_right"], "source": "teleop", "teleop": "teleop", "rate_hz": 10},
            },
        },
    }
    rx = {a: fake_bus.receiver(a) for a in ("arm_left", "arm_right")}
    pubs = {a: fake_bus.publisher(a) for a in ("arm_left", "arm_right")}
    tele = fake_bus.publisher("teleop")
    right_home = HOME + [0, -0.3, 0, 0, 0, 0, 0]
    homes = {"arm_left": HOME, "arm_right": right_home}
    ctl = node_builder(cfg, "controller")
    for _ in range(3):
        fake_clock.advance(0.1)
        for a, p in pubs.items():
            p.publish(RobotState.TOPIC, RobotState(q=np.zeros(7), dq=np.zeros(7), ee_pose=homes[a], gripper_width=0.08))
        ctl.step()
    tele.publish(
        TeleopCommand.TOPIC, TeleopCommand(kind="ee_delta", value=np.array([0, 0, 0.02, 0, 0, 0.0]), arm="arm_right")
    )
    fake_clock.advance(0.1)
    ctl.step()
    got = {
        a: [m for t, m in iter(lambda r=r: r.recv(), None) if isinstance(m, WaypointSchedule)] for a, r in rx.items()
    }
    assert got["arm_left"] and got["arm_right"]
    assert got["arm_left"][-1].positions[0] == pytest.approx(HOME)  # the left arm holds where it is
    assert got["arm_right"][-1].positions[0, 2] == pytest.approx(right_home[2] + 0.02)
    assert got["arm_left"][-1].stamps_ns[0] == got["arm_right"][-1].stamps_ns[0]  # lockstep


def test_a_policy_whose_actions_come_in_another_order_is_matched_by_name_never_by_position(rig):
    """A checkpoint with the quaternion scalar first (qw qx qy qz): its chunks are remapped by name,
    so the arm gets the TCP orientation the policy meant; by position it would get another one
    (lerobot#4122)."""
    names = ("x", "y", "z", "qw", "qx", "qy", "qz", "gripper_open")
    r = rig(policy=FakePolicy(names=names))
    r.tick(2)
    run_workers(r.ctl)
    run_workers(r.ctl)
    sched = r.schedules()
    assert len(sched) == 1
    np.testing.assert_allclose(sched[0].positions[:, 3:], np.tile(HOME[3:], (len(sched[0].positions), 1)), atol=1e-9)
    assert sched[0].gripper == pytest.approx(np.ones(len(sched[0].positions)))


def test_a_policy_whose_action_names_are_not_the_robots_is_refused_at_start(rig):
    names = ("x", "y", "z", "qx", "qy", "qz", "qw", "wrist_roll")
    r = rig(policy=FakePolicy(names=names))
    r.tick()
    run_workers(r.ctl)
    assert r.ctl._fatal is not None and "missing ['gripper_open']" in r.ctl._fatal and "wrist_roll" in r.ctl._fatal
    assert r.policy.requests == []


def test_every_request_carries_the_episodes_task_text_as_its_prompt(rig):
    """The setup's ``prompt`` until an episode's start event brings its own task text; a start
    without one goes back to the setup's."""
    r = rig(prompt="reach the cube")
    r.tick(2)
    run_workers(r.ctl)  # spec
    run_workers(r.ctl)
    assert [w.prompt for w in r.policy.requests] == ["reach the cube"]
    for task, want in (("pick the red cube", "pick the red cube"), ("", "reach the cube")):
        r.ctl_tx.send(EpisodeEvent.TOPIC, EpisodeEvent(kind="start", task=task))
        for _ in range(12):
            r.tick()
            run_workers(r.ctl)
        assert r.policy.requests[-1].prompt == want


def test_a_chunk_the_arm_refused_is_held_back_during_its_wait_then_tried_once_more(rig):
    """A deterministic policy whose observation does not change answers with the chunk the arm
    refused: during the wait (0.5 s, doubling per refusal in a row) it is held back and no request
    leaves; after it the chunk goes out once more (a refusal can be transient); a different chunk
    goes out at once."""
    r = rig()
    r.tick(2)
    run_workers(r.ctl)  # spec
    run_workers(r.ctl)
    assert len(r.schedules()) == 1
    r.refused = 1  # the arm refused it: its states count one refusal from now on
    r.tick(1)
    assert r.ctl.metrics()["arm_refusals"] == 1 and r.ctl.refusals.retry_at_ns > r.clock.now_ns()
    sent, n_req = [], len(r.policy.requests)
    while r.clock.now_ns() + 100_000_000 < r.ctl.refusals.retry_at_ns:  # the wait (ticks of 0.1 s): nothing goes out
        r.tick(1)
        run_workers(r.ctl)
        sent += r.schedules()
    assert sent == [] and r.ctl.metrics()["refused_repeats"] <= 1  # (one answer may have been in flight)
    n_during = len(r.policy.requests) - n_req
    assert n_during <= 1  # no request left during the wait (one may have left before it began)
    for _ in range(10):  # after it: the same chunk once more
        r.tick(1)
        run_workers(r.ctl)
        if sent := r.schedules():
            break
    assert len(sent) == 1 and sent[0].positions[0, 0] > HOME[0]
    r.refused = 2  # refused again: the wait doubles
    r.tick(1)
    assert r.ctl.refusals.retry_at_ns - r.clock.now_ns() > 0.8e9
    r.pose = HOME + np.r_[0.0, 0.02, 0, 0, 0, 0, 0]  # the arm was moved (an intervention, a person)
    for _ in range(12):
        r.tick(1)
        run_workers(r.ctl)
        if sent := r.schedules():
            break
    assert len(sent) == 1 and sent[0].positions[0, 1] == pytest.approx(HOME[1] + 0.02, abs=1e-6)


def test_holds_are_counted_by_their_reason(rig):
    r = rig(strategy="async")
    r.tick(2)
    run_workers(r.ctl)
    run_workers(r.ctl)
    assert len(r.schedules()) == 1
    for _ in range(6):  # the arm's state stops coming while the plan runs: a request finds it stale
        r.clock.advance(0.1)
        r.ctl.step()
        run_workers(r.ctl)
    m = r.ctl.metrics()
    assert m["holds.stale_observation"] == 1 and m["obs_holds"] >= 1 and "holds.estop" not in m
