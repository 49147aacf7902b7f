"""Safety checks (pure): refusals, clamps, jumps, servo guard."""

import numpy as np
import pytest

from robot_stack.safety import SafetyConfig, SafetyViolation, ScheduleChecker, ServoGuard

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


def test_servo_guard_rate_limits_and_holds_on_nan():
    c = checker(max_joint_vel=1.0)
    g = ServoGuard(c.cfg, LOWER, UPPER, c.counters)
    q = g.filter(np.array([1.0, 0, 0]), np.zeros(3), dt=0.01)
    assert q[0] == pytest.approx(0.012)  # 1.0 rad/s * 1.2 margin * 10 ms
    assert np.array_equal(g.filter(np.array([np.inf, 0, 0]), q, 0.01), q)
    assert c.counters["servo_velocity"] == 1 and c.counters["servo_non_finite"] == 1


def test_config_box_validation():
    with pytest.raises(ValueError, match="workspace_min must be below"):
        SafetyConfig(workspace_min=(1, 0, 0), workspace_max=(0.5, 1, 1))
