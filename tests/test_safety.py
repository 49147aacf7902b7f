"""Safety checks (pure): refusals, clamps, jumps, schedule sanity, servo guard."""

import numpy as np
import pytest

from robot_stack.control.safety import SafetyConfig, SafetyViolation, ScheduleChecker, ServoGuard

LOWER, UPPER = -np.ones(3) * 2, np.ones(3) * 2


def fk(q):
    return np.array([0.5 + 0.1 * q[0], 0.1 * q[1], 0.3 + 0.1 * q[2], 0, 0, 0, 1.0])


def checker(**kw):
    return ScheduleChecker(SafetyConfig(**kw), LOWER, UPPER, fk=fk)


def test_non_finite_refused_and_counted():
    c = checker()
    with pytest.raises(SafetyViolation) as e:
        c.joint(np.array([[0.0, np.nan, 0.0]]), np.zeros(3))
    assert e.value.check == "non_finite" and c.counters["non_finite"] == 1


def test_joint_limit_refuse_or_clamp():
    with pytest.raises(SafetyViolation, match="joint 2 at 1.990"):
        checker(max_jump_joint=5).joint(np.array([[0.0, 1.99, 0.0]]), np.zeros(3))
    c = checker(on_limit="clamp", max_jump_joint=5)
    q = c.joint(np.array([[0.0, 1.99, 0.0]]), np.zeros(3))
    assert q[0, 1] == pytest.approx(2 - 0.02) and c.counters["joint_limit_clamped"] == 1


def test_jump_from_current_state_refused():
    with pytest.raises(SafetyViolation, match="jump|0.500 rad"):
        checker(max_jump_joint=0.3).joint(np.array([[0.5, 0, 0]]), np.zeros(3))


def test_workspace_box_for_joint_and_pose_schedules():
    c = checker(workspace_max=(0.6, 0.6, 0.8), max_jump_joint=5)
    with pytest.raises(SafetyViolation) as e:
        c.joint(np.array([[1.5, 0, 0]]), np.zeros(3))  # fk x = 0.65 > 0.6
    assert e.value.check == "workspace"
    with pytest.raises(SafetyViolation, match="workspace"):
        c.pose(np.array([[0.5, 0.0, -0.1, 0, 0, 0, 1.0]]), np.array([0.5, 0, 0.0, 0, 0, 0, 1]))
    c2 = checker(on_limit="clamp", max_jump_ee=1)
    p = c2.pose(np.array([[0.5, 0.0, -0.1, 0, 0, 0, 1.0]]), np.array([0.5, 0, 0.0, 0, 0, 0, 1]))
    assert p[0, 2] == pytest.approx(0.005)


def test_pose_jump_and_bad_quaternion():
    c = checker()
    with pytest.raises(SafetyViolation, match="200 mm"):
        c.pose(np.array([[0.5, 0.2, 0.3, 0, 0, 0, 1.0]]), np.array([0.5, 0, 0.3, 0, 0, 0, 1]))
    with pytest.raises(SafetyViolation, match="unit length"):
        c.pose(np.array([[0.5, 0.0, 0.3, 0, 0, 0, 2.0]]), np.array([0.5, 0, 0.3, 0, 0, 0, 1]))


def _derivatives(ts, q):
    """Velocity, acceleration and jerk of commands q (N, n) at times ts (N,) by divided differences
    (exact for the piecewise-cubic profiles a jerk-limited generator produces)."""
    out, y = [], q
    for k in (1, 2, 3):
        y = (y[1:] - y[:-1]) / (ts[k:] - ts[:-k])[:, None]
        out.append(np.abs(y).max(0) * [1, 2, 6][k - 1])
    return out


def _drive(guard, plan, seed=0):
    rng = np.random.default_rng(seed)
    ts, qs, t = [0.0], [guard.q.copy()], 0.0
    for kind, value in plan:
        d = 0.002 * rng.uniform(0.8, 1.6)  # jittery servo periods
        t += d
        value = value(t) if callable(value) else value
        qs.append(guard.track(value, d) if kind == "track" else guard.stop(d))
        ts.append(t)
    return np.array(ts), np.array(qs)


def test_servo_guard_holds_velocity_acceleration_and_jerk_in_every_mode():
    c = checker(max_joint_vel=1.0, max_joint_acc=5.0, max_joint_jerk=100.0)
    g = ServoGuard(c.cfg, LOWER, UPPER, c.counters, q0=np.zeros(3))
    # a step (the guard smooths it), a fast sine it cannot follow, a sudden stop from full speed,
    # and a NaN (turned into a stop)
    plan = (
        [("track", np.array([0.3, 0, 0]))] * 300
        + [("track", np.array([0.3, 1.5 * np.sin(k * 0.05), -0.5])) for k in range(300)]
        + [("stop", None)] * 400
        + [("track", np.array([np.nan, 0, 0]))] * 50
    )
    ts, q = _drive(g, plan)
    v, a, j = _derivatives(ts, q)
    assert np.all(v <= 1.0 + 1e-6) and np.all(a <= 5.0 + 1e-5) and np.all(j <= 100.0 + 1e-3), (v, a, j)
    assert a.max() > 4.5 and j.max() > 90  # the limits were reached, not avoided
    assert q[300, 0] == pytest.approx(0.3, abs=1e-6)  # the step was reached
    assert np.allclose(q[-1], q[-60]) and not g.moving  # held after the stop
    assert c.counters["servo_non_finite"] == 50 and c.counters["servo_limited"] > 0


def test_servo_guard_passes_a_feasible_trajectory_with_small_lag():
    c = checker(max_joint_vel=1.5, max_joint_acc=6.0, max_joint_jerk=150.0)
    g = ServoGuard(c.cfg, LOWER, UPPER, c.counters, q0=np.zeros(3))

    def want(t):  # from rest; 0.6 rad/s, 1.2 rad/s^2 at most
        return np.array([0.3 * (1 - np.cos(2 * t)), -0.2 * (1 - np.cos(3 * t)), 0.0])

    ts, q = _drive(g, [("track", want)] * 2000)
    err = np.abs(q[1:] - np.array([want(t) for t in ts[1:]])).max()
    assert err < 2e-3, err  # a smooth, slow plan is followed, not lagged behind


def test_servo_guard_smooths_a_step_along_its_direction():
    """A step the guard must smooth (a chunk switch, a jump) is taken with every joint in concert:
    the command stays on the line from start to target (phase synchronisation), so a straight
    TCP path is not bent by joints that finish on their own (no synchronisation does that)."""
    c = checker(max_joint_vel=1.5, max_joint_acc=6.0, max_joint_jerk=150.0)
    g = ServoGuard(c.cfg, LOWER, UPPER, c.counters, q0=np.zeros(3))
    step = np.array([0.2, -0.05, 0.01])
    ts, q = _drive(g, [("track", step)] * 400)
    assert q[-1] == pytest.approx(step, abs=1e-6)
    u = step / np.linalg.norm(step)
    off_line = np.linalg.norm(q - (q @ u)[:, None] * u, axis=1)
    assert off_line.max() < 0.03 * np.linalg.norm(step), off_line.max()  # phase: 1.7 %; unsynchronised: 14 %


def test_config_box_validation():
    with pytest.raises(ValueError, match="workspace_min must be below"):
        SafetyConfig(workspace_min=(1, 0, 0), workspace_max=(0.5, 1, 1))


def test_schedule_sanity_refusals_are_named():
    c = checker()
    now = 10**12
    ok = np.array([now + 10**8])
    for kw, check in [
        (dict(stamps_ns=np.zeros(0, np.int64), positions=np.zeros((0, 3))), "empty"),
        (dict(stamps_ns=now + np.arange(1, 2000) * 10**6, positions=np.zeros((1999, 3))), "too_long"),
        (dict(stamps_ns=ok, positions=np.zeros((1, 4))), "shape"),
        (dict(stamps_ns=np.array([now + 31 * 10**9]), positions=np.zeros((1, 3))), "too_far_ahead"),
        (dict(stamps_ns=ok, positions=np.zeros((1, 3)), gripper=np.array([np.nan])), "gripper"),
        (dict(stamps_ns=ok, positions=np.zeros((1, 3)), gripper=np.array([1.5])), "gripper"),
    ]:
        with pytest.raises(SafetyViolation) as e:
            c.admit(kw["stamps_ns"], kw["positions"], "joint", kw.get("gripper"), now)
        assert e.value.check == check
    c.admit(ok, np.zeros((1, 3)), "joint", np.array([0.5]), now)  # a sane one passes
    assert c.counters["gripper"] == 2 and c.counters["empty"] == 1


def test_orientation_jump_refused():
    c = checker(max_jump_ee_rad=0.5)
    here = np.array([0.5, 0, 0.3, 0, 0, 0, 1.0])
    flipped = np.array([[0.5, 0, 0.3, 1.0, 0, 0, 0]])  # 180 deg about x, same position
    with pytest.raises(SafetyViolation, match="rotated 180 deg"):
        c.pose(flipped, here)
    small = np.array([[0.5, 0, 0.3, np.sin(0.1), 0, 0, np.cos(0.1)]])  # 0.2 rad
    c.pose(small, here)
    neg = small.copy()
    neg[0, 3:] *= -1
    c.pose(neg, here)  # the same rotation written with the other quaternion sign


def test_joint_workspace_scan_resumes_under_a_budget():
    c = checker(workspace_max=(0.6, 0.6, 0.8), max_jump_joint=5)
    q = np.zeros((50, 3))
    q[40, 0] = 1.5  # fk x = 0.65, outside
    i = c.joint_workspace(q, 0, budget_s=0.0)  # one waypoint per call with no budget
    assert i == 1
    while i < 40:
        i = c.joint_workspace(q, i, budget_s=0.0)
    with pytest.raises(SafetyViolation, match="waypoint 40"):
        c.joint_workspace(q, i, budget_s=0.0)


def test_servo_guard_survives_an_input_ruckig_refuses():
    """An exception inside Ruckig never ends the servo loop: each refused plan is counted and the
    guard falls back (phase-synchronised, unsynchronised, then a stop the same two ways, then
    braking at the acceleration limit)."""
    from ruckig import RuckigError

    c = checker(max_joint_vel=1.0, max_joint_acc=5.0, max_joint_jerk=100.0)
    g = ServoGuard(c.cfg, LOWER, UPPER, c.counters, q0=np.zeros(3))
    for _ in range(100):
        g.track(np.array([0.3, 0.0, 0.0]), 0.002)  # moving
    v0 = g.v.copy()

    class Refusing:
        delta_time = 0.002

        def update(self, inp, out):
            raise RuckigError("[ruckig] refused input")

    g._otg = Refusing()
    q = g.track(np.array([0.3, 0.0, 0.0]), 0.002)
    assert np.all(np.isfinite(q)) and c.counters["servo_plan_error"] == 4  # two tracks, two stops
    assert np.abs(g.v[0]) < np.abs(v0[0])  # braking
    assert np.abs(g.a).max() <= 5.0 + 1e-9


def test_servo_guard_never_outputs_non_finite_numbers():
    """Near-degenerate states (rest at the target up to rounding) made phase-synchronised Ruckig
    return NaN, which reached the sim as joint targets: every output is finite, limits hold."""
    rng = np.random.default_rng(3)
    c = checker(max_joint_vel=1.5, max_joint_acc=6.0, max_joint_jerk=150.0)
    lo, hi = -np.full(7, 3.0), np.full(7, 3.0)
    g = ServoGuard(c.cfg, lo, hi, c.counters, q0=np.zeros(7))
    target = np.zeros(7)
    qs = []
    for k in range(6000):
        if k % 500 == 0:  # a step, then rest at it with rounding-level wiggle
            target = rng.uniform(-0.3, 0.3, 7)
        q_des = target + rng.normal(0, 1e-14, 7) * (k % 3 == 0)
        qs.append(g.track(q_des, 0.002 if k % 97 else 0.0021))
    qs = np.array(qs)
    assert np.all(np.isfinite(qs))
    v = np.abs(np.diff(qs, axis=0)) / 0.002
    assert v.max() <= 1.5 * 1.06  # (periods of 2.1 ms read as 2 ms here)
