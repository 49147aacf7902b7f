"""The arm node in-process: its servo core on the fake context, a fake clock and the ideal arm.

No processes, no sockets, no sleeping: each test steps the node tick by tick.
"""

import numpy as np
import pytest

from robot_stack.comm.messages import RobotState
from robot_stack.runtime.arm_client import ArmClient
from robot_stack.control.paths import straight_line

RATE = 500.0


def arm_setup(**safety):
    return {
        "name": "arm_test",
        "nodes": {
            "arm": {
                "kind": "arm",
                "params": {
                    "driver": {"type": "ideal", "robot": "panda_robotiq"},
                    "rate_hz": RATE,
                    "state_rate_hz": 100.0,
                    "safety": {"estop_release": ["operator"], **safety},
                },
            },
        },
    }


def run(node, clock, seconds, beat: ArmClient | None = None):
    """Step ``node`` for ``seconds`` of fake time at its rate (``beat``: heartbeat every 20 ms)."""
    n = int(round(seconds * RATE))
    for i in range(n):
        if beat is not None and i % 10 == 0:
            beat.heartbeat()
        node.step()
        clock.advance(1.0 / RATE)


def client(node, source):
    return ArmClient(None, None, arm="arm", source=source, heartbeat_hz=0, tx=node.ctx.bus.sender("arm", source))


def tcp(node):
    return node.kin.fk(node.driver.q)[:3]


def move_schedule(node, dx, t0_ns, speed=0.1):
    start = node.kin.fk(node.driver.q)
    goal = start.copy()
    goal[:3] += dx
    return straight_line(start, goal, t0_ns, speed=speed)


def test_a_schedule_is_tracked_to_its_end_and_the_state_published(node_builder, fake_clock):
    arm = node_builder(arm_setup(), "arm")
    ctl = client(arm, "controller")
    start = tcp(arm)
    stamps, poses = move_schedule(arm, [0.05, 0.0, 0.0], fake_clock.now_ns())
    ctl.heartbeat()
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 1.0, beat=ctl)
    assert np.allclose(tcp(arm), start + [0.05, 0, 0], atol=1e-3)
    assert arm.mode == "hold"
    states = [m for t, m in arm.ctx.bus.published["arm"] if t == RobotState.TOPIC]
    assert len(states) == pytest.approx(100, abs=2)  # 100 Hz of the 500 Hz loop, one per measurement
    assert all(b.stamp_ns > a.stamp_ns for a, b in zip(states, states[1:]))
    assert arm.metrics()["schedules"] == 1


def test_a_silent_sender_makes_the_arm_hold_after_its_heartbeat_timeout(node_builder, fake_clock):
    arm = node_builder(arm_setup(heartbeat_timeout_s=0.2), "arm")
    ctl = client(arm, "controller")
    start = tcp(arm)
    stamps, poses = move_schedule(arm, [0.1, 0.0, 0.0], fake_clock.now_ns(), speed=0.05)  # a 2 s move
    ctl.heartbeat()
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.5, beat=ctl)  # beating: it moves
    moved = tcp(arm)[0] - start[0]
    assert moved > 0.01 and arm.mode == "track"
    run(arm, fake_clock, 0.3)  # silent for 0.3 s > 0.2 s: the schedule is dropped, the arm stops
    assert arm.metrics()["safety.heartbeat_stale"] == 1
    run(arm, fake_clock, 0.5)
    assert arm.mode == "hold"
    x_stop = tcp(arm)[0]
    run(arm, fake_clock, 1.0)
    assert tcp(arm)[0] == pytest.approx(x_stop, abs=1e-6)  # held, not following the rest of the plan
    assert x_stop - start[0] < 0.06  # it stopped well short of the 0.1 m goal


def test_estop_stops_refuses_schedules_and_only_an_allowed_source_releases_it(node_builder, fake_clock):
    arm = node_builder(arm_setup(), "arm")
    ctl, intruder, operator = client(arm, "controller"), client(arm, "intruder"), client(arm, "operator")
    stamps, poses = move_schedule(arm, [0.1, 0.0, 0.0], fake_clock.now_ns())
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.3, beat=ctl)
    ctl.estop("test")
    run(arm, fake_clock, 0.5, beat=ctl)
    assert arm.mode == "estop" and arm.metrics()["safety.estop"] == 1
    q_held = arm.driver.q.copy()
    stamps, poses = move_schedule(arm, [0.02, 0.0, 0.0], fake_clock.now_ns())
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.5, beat=ctl)
    assert arm.metrics()["safety.refused_estop"] == 1 and np.allclose(arm.driver.q, q_held)
    intruder.release()  # not in safety.estop_release
    run(arm, fake_clock, 0.1)
    assert arm.mode == "estop" and arm.metrics()["safety.estop_release_refused"] == 1
    operator.release()
    run(arm, fake_clock, 0.1)
    assert arm.mode == "hold"
    stamps, poses = move_schedule(arm, [0.02, 0.0, 0.0], fake_clock.now_ns())
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.6, beat=ctl)
    assert arm.metrics()["schedules"] == 2  # the first schedule and this one after the release


def test_every_command_keeps_the_joint_limits_of_velocity_acceleration_and_jerk(node_builder, fake_clock):
    arm = node_builder(arm_setup(), "arm")
    ctl = client(arm, "controller")
    stamps, poses = move_schedule(arm, [0.07, 0.05, -0.05], fake_clock.now_ns(), speed=0.4)
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.25, beat=ctl)
    ctl.estop("mid-motion")  # a stop at speed: still within the limits
    run(arm, fake_clock, 0.5, beat=ctl)
    t = np.array([c[0] for c in arm.driver.commands]) / 1e9
    q = np.array([c[1] for c in arm.driver.commands])
    dt = np.diff(t)[:, None]
    v = np.diff(q, axis=0) / dt
    a = np.diff(v, axis=0) / dt[1:]
    s = arm.core.guard
    assert np.max(np.abs(v)) > 0.1  # it did move
    assert np.all(np.abs(v) <= np.asarray(s.vmax) * (1 + 1e-6))
    assert np.all(np.abs(a) <= np.asarray(s.amax) * (1 + 1e-3))


def test_a_driver_fault_holds_refuses_schedules_and_recovery_is_for_allowed_sources(node_builder, fake_clock):
    arm = node_builder(arm_setup(), "arm")
    ctl, operator = client(arm, "controller"), client(arm, "operator")
    arm.driver.fault = "reflex: cartesian reflex"
    run(arm, fake_clock, 0.05)
    assert arm.mode == "estop" and arm.metrics()["safety.driver_fault"] == 1
    stamps, poses = move_schedule(arm, [0.02, 0.0, 0.0], fake_clock.now_ns())
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.05)
    assert arm.metrics()["safety.refused_driver_fault"] == 1
    ctl.recover()
    run(arm, fake_clock, 0.05)
    assert arm.driver.recoveries == 0 and arm.metrics()["safety.recover_refused"] == 1
    operator.recover()
    run(arm, fake_clock, 0.05)
    assert arm.driver.recoveries == 1 and arm.mode == "hold"
    assert arm.metrics()["safety.driver_fault"] == 1  # one fault episode, counted once


def test_a_message_that_decodes_but_is_wrong_never_reaches_the_driver(node_builder, fake_clock):
    arm = node_builder(arm_setup(), "arm")
    ctl = client(arm, "controller")
    q0 = arm.driver.q.copy()
    stamps, poses = move_schedule(arm, [0.02, 0.0, 0.0], fake_clock.now_ns())
    poses[3, 0] = np.nan
    ctl.send_schedule(stamps, poses, space="ee")
    far = poses.copy()
    far[:, 0] = np.nan_to_num(far[:, 0]) + 0.5  # a jump of half a metre
    ctl.send_schedule(stamps, far, space="ee")
    arm.ctx.bus.inject("arm", [b"heartbeat", b"\x81\xa1x\x01"])  # undecodable header
    run(arm, fake_clock, 0.5, beat=ctl)
    assert np.allclose(arm.driver.q, q0)
    m = arm.metrics()
    assert m["schedules"] == 0 and m["safety.non_finite"] == 1 and m["safety.jump"] == 1
    assert all(np.all(np.isfinite(c[1])) for c in arm.driver.commands)
    assert arm.rx.stats.decode_errors >= 1


def test_shutdown_brings_a_moving_arm_to_rest_and_releases_the_driver(node_builder, fake_clock):
    arm = node_builder(arm_setup(), "arm")
    ctl = client(arm, "controller")
    stamps, poses = move_schedule(arm, [0.1, 0.0, 0.0], fake_clock.now_ns(), speed=0.3)
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, 0.2, beat=ctl)
    assert arm.core.guard.moving
    arm.close()
    assert arm.driver.stopped and not arm.core.guard.moving
    v_last = np.abs(arm.driver.commands[-1][1] - arm.driver.commands[-2][1])
    assert np.max(v_last) < 1e-6


# ----------------------------------------------------------------------------- collision checks
#: the Panda's wrist 14 mm into the table with the TCP in the workspace box (tests/test_collision.py)
THROUGH_TABLE = np.array([2.662, -1.186, -2.385, -2.156, 0.827, 0.999, 1.193])


def test_a_joint_schedule_through_the_table_is_refused_by_name(node_builder, fake_clock):
    arm = node_builder(arm_setup(max_jump_joint=10.0), "arm")
    ctl = client(arm, "controller")
    q0 = arm.driver.q.copy()
    stamps = fake_clock.now_ns() + np.arange(1, 9) * 500_000_000
    ctl.heartbeat()
    ctl.send_schedule(stamps, np.linspace(q0, THROUGH_TABLE, 8), space="joint")
    run(arm, fake_clock, 0.5, beat=ctl)
    m = arm.metrics()
    assert m["safety.collision"] == 1 and m["schedules"] == 0
    assert np.allclose(arm.driver.q, q0, atol=1e-9)  # never moved


def _descend_to_the_table(arm, fake_clock, speed: float) -> ArmClient:
    """A controller's straight TCP schedule from where the arm is down to 6 mm over the table
    (inside the workspace box), at ``speed`` m/s; returns the client (heartbeat it)."""
    ctl = client(arm, "controller")
    start = arm.kin.fk(arm.driver.q)
    stamps, poses = move_schedule(arm, np.r_[0.0, 0.0, 0.006 - start[2]], fake_clock.now_ns(), speed=speed)
    ctl.heartbeat()
    ctl.send_schedule(stamps, poses, space="ee")
    return ctl


def test_a_tcp_driven_into_the_table_slows_and_stops_above_it(node_builder, fake_clock):
    """Straight down at 0.1 m/s to 6 mm over the table (inside the workspace box): within the
    slow-down distance of its pair group (links against the scene 50 mm, the gripper against it
    20 mm, the arm against itself 20 mm) the
    schedule's clock runs at margin / slow-down (MoveIt Servo's linear profile), at full speed
    outside; the arm stops before the pads' 3 mm clearance and the schedule is dropped."""
    arm = node_builder(arm_setup(), "arm")
    ctl = _descend_to_the_table(arm, fake_clock, speed=0.1)
    core, checker = arm.core, arm.core.collision
    actual, expected, clock_rate, groups = [], [], [], set()
    for i in range(int(7.0 * RATE)):
        if i % 10 == 0:
            ctl.heartbeat()
        lag = core.lag_ns
        arm.step()
        fake_clock.advance(1.0 / RATE)
        c = checker.closest(arm.driver.q)
        actual.append(np.inf if c is None else c.margin)
        if core.traj is not None:  # tracking: this tick's clock rate against the profile
            c = core.contact
            expected.append(1.0 if c is None else min(1.0, c.margin / checker.cfg.slowdown_for(c.group)))
            clock_rate.append(1.0 - (core.lag_ns - lag) * RATE / 1e9)
            groups |= {c.group} if c is not None and c.margin < checker.cfg.slowdown_for(c.group) else set()
    m = arm.metrics()
    assert m["safety.collision_stop"] == 1 and m["safety.collision_slowdown"] == 1  # one slow-down, counted once
    assert min(actual) > -0.5e-3, min(actual)  # at most the stop's creep past the clearance (3 mm)
    assert arm.mode == "hold" and tcp(arm)[2] > 0.007  # stopped above the schedule's end
    expected, clock_rate = np.array(expected), np.array(clock_rate)
    slowed = expected < 1.0
    assert slowed.sum() > 100 and "fingers" in groups
    assert np.allclose(clock_rate[slowed], expected[slowed], atol=1e-3)
    assert np.all(clock_rate[~slowed] >= 1.0 - 1e-6)  # full speed outside (a lagging clock catches up)


def test_late_ticks_cannot_carry_the_arm_past_the_clearance(node_builder, fake_clock):
    """The same descent at 0.3 m/s with every 20th tick 60 ms late (a starved process): the plan's
    point jumps 18 mm at once and the guard's command brakes from speed, so a check of the desired
    configuration is outrun; a check that counts the braking motion is not: the arm stops, never
    more than 0.5 mm past the pads' 3 mm clearance."""
    arm = node_builder(arm_setup(), "arm")
    ctl = _descend_to_the_table(arm, fake_clock, speed=0.3)
    checker = arm.core.collision
    actual = []
    for i in range(int(4.0 * RATE)):
        if i % 10 == 0:
            ctl.heartbeat()
        arm.step()
        fake_clock.advance(0.06 if i % 20 == 19 else 1.0 / RATE)
        c = checker.closest(arm.driver.q)
        actual.append(np.inf if c is None else c.margin)
    assert arm.metrics()["safety.collision_stop"] == 1
    assert min(actual) > -0.5e-3, min(actual)
    assert arm.mode == "hold" and tcp(arm)[2] > 0.007


def test_a_stop_ends_at_the_brake_point():
    """ServoGuard.brake_point: a stop begun now, stepped at 2 ms to rest, ends there (1e-6 rad)."""
    from robot_stack.control.safety import SafetyConfig, SafetyCounters, ServoGuard

    cfg = SafetyConfig()
    rng = np.random.default_rng(3)
    for _ in range(20):
        g = ServoGuard(cfg, -np.full(7, 3.0), np.full(7, 3.0), SafetyCounters(), q0=np.zeros(7))
        target = rng.uniform(-1.0, 1.0, 7)
        for _ in range(int(rng.integers(5, 200))):  # somewhere along a move: speed and acceleration
            g.track(target, 0.002)
        assert g.moving
        end = g.brake_point()
        for _ in range(5000):
            if not g.moving:
                break
            q = g.stop(0.002)
        assert not g.moving and np.abs(q - end).max() < 1e-6, np.abs(q - end).max()


#: the right arm's wrist (link6) 15 mm into the left arm's forearm (link4) when the left arm, 0.8 m
#: to the right arm's +y as in configs/sim_bimanual.yaml, is at home; the TCP inside the
#: bimanual setup's workspace box (found by sampling the joint space)
INTO_LEFT = np.array([-0.87, -1.458, 1.097, -1.189, -0.121, 1.807, 1.097])
BIMANUAL_BOX = {"workspace_min": [0.15, -0.8, 0.005], "workspace_max": [0.85, 0.8, 0.9]}  # (z: the path passes 0.8)


def step_both(ctl, left, right, fake_clock, seconds: float, each=None) -> None:
    """Both arm nodes ticked at RATE for ``seconds`` of fake time, the sender heartbeating every
    10 ticks; ``each()`` after every tick."""
    for i in range(int(seconds * RATE)):
        if i % 10 == 0:
            ctl.heartbeat()
        left.step()
        right.step()
        fake_clock.advance(1.0 / RATE)
        if each is not None:
            each()


def two_arms(left_base_y: float):
    arm = lambda **extra: {  # noqa: E731
        "kind": "arm",
        "params": {
            "driver": {"type": "ideal", "robot": "panda_robotiq"},
            "rate_hz": RATE,
            "state_rate_hz": 100.0,
            "safety": BIMANUAL_BOX,
            **extra,
        },
    }
    others = [{"node": "left", "robot": "panda_robotiq", "base": [0.0, left_base_y, 0.0, 0.0]}]
    return {"name": "two_arms", "nodes": {"left": arm(), "right": arm(collision={"arms": others})}}


@pytest.mark.parametrize("left_base_y, refused", [(0.8, True), (1.6, False)])
def test_a_joint_path_into_the_other_arm_is_refused(node_builder, fake_clock, caplog, left_base_y, refused):
    """The right arm's joint schedule from home into the left arm's measured links is refused by
    name; the same schedule with the left arm declared twice as far away is run."""
    cfg = two_arms(left_base_y)
    left, right = node_builder(cfg, "left"), node_builder(cfg, "right")
    ctl = ArmClient(None, None, arm="right", source="controller", heartbeat_hz=0, tx=right.ctx.bus.sender("right", "c"))
    q0 = right.driver.q.copy()
    for _ in range(10):  # the left arm's first states reach the right arm's checker
        left.step()
        right.step()
        fake_clock.advance(1.0 / RATE)
    assert np.allclose(right.core.collision.d.qpos[right.core.collision.other_qpos["left"]], left.driver.q)
    stamps = fake_clock.now_ns() + np.arange(1, 9) * 500_000_000
    ctl.heartbeat()
    ctl.send_schedule(stamps, np.linspace(q0, INTO_LEFT, 8), space="joint")
    step_both(ctl, left, right, fake_clock, 5.0)
    m = right.metrics()
    if refused:
        assert m["safety.collision"] == 1 and m["schedules"] == 0
        assert "refused schedule (collision)" in caplog.text and "from left/" in caplog.text
        assert np.allclose(right.driver.q, q0, atol=1e-9)
    else:
        assert m.get("safety.collision", 0) == 0 and m["schedules"] == 1
        assert np.allclose(right.driver.q, INTO_LEFT, atol=1e-3)


def test_a_bad_or_stale_state_of_the_other_arm_is_counted_and_the_last_good_one_kept(node_builder, fake_clock):
    from types import SimpleNamespace

    right = node_builder(two_arms(0.8), "right")
    core, t = right.core, fake_clock.now_ns()
    good = SimpleNamespace(q=INTO_LEFT, q_plan=None, stamp_ns=t)
    core.on_other_arm("left", good, t)
    for k, bad in enumerate((np.full(7, np.nan), np.zeros(6))):
        for _ in range(3):  # the same bad state, read at three ticks: counted once
            core.on_other_arm("left", SimpleNamespace(q=bad, q_plan=None, stamp_ns=t + k + 1), t + k + 1)
    old = SimpleNamespace(q=INTO_LEFT, q_plan=None, stamp_ns=t - 2_000_000_000)  # 2 s old
    for k in range(5):  # one silence, counted once however many ticks see it
        core.on_other_arm("left", old, t + k)
    assert core.counters["collision_bad_peer_state"] == 2 and core.counters["collision_stale_peer"] == 1
    core.on_other_arm("left", SimpleNamespace(q=INTO_LEFT, q_plan=None, stamp_ns=t + 10), t + 10)  # fresh again
    core.on_other_arm("left", old, t + 20)  # a second silence
    assert core.counters["collision_stale_peer"] == 2
    assert np.allclose(core.collision.d.qpos[core.collision.other_qpos["left"]], INTO_LEFT)


def test_a_grasp_held_inside_the_slow_down_zone_adds_no_lag_and_the_lift_follows(node_builder, fake_clock):
    """Down to the pick's grasp height (TCP 20 mm over the table: the pads inside their slow-down
    distance), held 3 s, then lifted: the held target adds no lag (a lag that grew while holding
    once froze a demo's lift), and the lift reaches its goal in about its own duration."""
    arm = node_builder(arm_setup(), "arm")
    ctl = client(arm, "controller")
    core = arm.core
    start = arm.kin.fk(arm.driver.q)
    down = start.copy()
    down[2] = 0.02
    ctl.heartbeat()
    ctl.send_schedule(*straight_line(start, down, fake_clock.now_ns(), speed=0.1), space="ee")
    run(arm, fake_clock, 6.0, beat=ctl)
    assert tcp(arm)[2] == pytest.approx(0.02, abs=1e-3) and core.contact is not None
    assert core.collision.scale_of(core.contact) < 1.0  # inside the slow-down zone
    lag = core.lag_ns
    run(arm, fake_clock, 3.0, beat=ctl)
    assert core.lag_ns == lag  # holding adds none
    up = down.copy()
    up[2] = 0.12
    stamps, poses = straight_line(arm.kin.fk(arm.driver.q), up, fake_clock.now_ns(), speed=0.1)
    ctl.send_schedule(stamps, poses, space="ee")
    run(arm, fake_clock, (stamps[-1] - stamps[0]) / 1e9 + 0.5, beat=ctl)
    assert tcp(arm)[2] == pytest.approx(0.12, abs=2e-3)
    assert arm.metrics().get("safety.collision_stop", 0) == 0


def test_an_arm_publishes_where_its_commands_are_headed_and_the_other_arm_reads_it(node_builder, fake_clock):
    """The left arm runs a joint schedule: its robot/state carries q_plan, its commanded joints
    PLAN_AHEAD_S ahead (ahead of the measured joints in the direction of motion); the right arm's
    checker places the left arm's planned copy there, and back on the measured joints at rest.
    (While the guard brakes at the end, the extrapolation points back: a look-ahead, not a plan.)"""
    cfg = two_arms(0.8)
    left, right = node_builder(cfg, "left"), node_builder(cfg, "right")
    ctl = ArmClient(None, None, arm="left", source="controller", heartbeat_hz=0, tx=left.ctx.bus.sender("left", "c"))
    q0 = left.driver.q.copy()
    goal = q0 + np.array([0.0, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    ctl.heartbeat()
    ctl.send_schedule(fake_clock.now_ns() + np.array([500_000_000, 1_500_000_000]), np.stack([q0, goal]), space="joint")
    cc, ahead = right.core.collision, []

    def lead():  # joint 2 falls: the planned copy is below the measured one
        ahead.append(float(cc.d.qpos[cc.other_qpos["left"]][1] - cc.d.qpos[cc.plan_qpos["left"]][1]))

    step_both(ctl, left, right, fake_clock, 2.5, each=lead)
    ahead = np.array(ahead)
    assert ahead.max() > 0.02  # mid-motion: the planned copy leads (the guard's speed x 0.25 s)
    moving = np.abs(ahead) > 1e-9
    assert (ahead[moving] > 0).mean() > 0.8  # ahead in the direction of motion (not while braking)
    assert abs(ahead[-1]) < 1e-9 and np.allclose(left.driver.q, goal, atol=1e-3)  # at rest: one copy
