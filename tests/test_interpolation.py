"""Trajectory interpolation, merging and limit stretching (exact values)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.control.interpolation import Limits, Trajectory

S = 1_000_000_000


def test_joint_linear_interpolation_and_hold_outside_span():
    tr = Trajectory("joint", 0, np.zeros(2))
    tr.merge(np.array([S, 2 * S]), np.array([[1.0, -1.0], [1.0, 1.0]]), now_ns=0)
    assert np.allclose(tr.eval(S // 2), [0.5, -0.5])
    assert np.allclose(tr.eval(int(1.5 * S)), [1.0, 0.0])
    assert np.allclose(tr.eval(-5), [0, 0])
    assert np.allclose(tr.eval(10 * S), [1.0, 1.0])  # ran out of waypoints: hold the last one
    assert np.allclose(tr.velocity(S // 2), [1.0, -1.0])


def test_merge_trims_at_now_and_replaces_the_tail_without_jump():
    tr = Trajectory("joint", 0, np.zeros(1))
    tr.merge(np.array([S, 2 * S, 3 * S]), np.array([[1.0], [2.0], [3.0]]), now_ns=0)
    now = int(1.5 * S)
    before = tr.eval(now)
    # new chunk: one stale waypoint (1.2 s, in the past) and two future ones from 2.5 s
    tr.merge(np.array([int(1.2 * S), int(2.5 * S), int(3.5 * S)]), np.array([[9.0], [5.0], [6.0]]), now_ns=now)
    assert np.allclose(tr.eval(now), before)  # no jump at the merge
    assert list(tr.t) == [now, 2 * S, int(2.5 * S), int(3.5 * S)]  # old 2.0 s kept, old 3.0 s replaced
    assert np.allclose(tr.x[:, 0], [1.5, 2.0, 5.0, 6.0])
    assert 9.0 not in tr.x  # the stale waypoint was dropped


def test_velocity_limit_stretches_segments_and_shifts_later_waypoints():
    tr = Trajectory("joint", 0, np.zeros(1))
    n = tr.merge(np.array([S // 10, 2 * S]), np.array([[1.0], [1.5]]), now_ns=0, limits=Limits(vel=2.0))
    assert n == 1
    # 1 rad at 2 rad/s needs 0.5 s instead of 0.1 s; the next waypoint moves by the same 0.4 s
    assert list(tr.t) == [0, S // 2, int(2.4 * S)]


def test_acceleration_limit_stretches_from_rest():
    tr = Trajectory("joint", 0, np.zeros(1))
    tr.merge(np.array([S // 10]), np.array([[0.1]]), now_ns=0, limits=Limits(vel=10.0, acc=1.0))
    dt = tr.t[1] / S
    v = 0.1 / dt
    assert v <= 1.0 * dt + 1e-9  # velocity change from rest fits acc * duration
    assert dt > 0.1


def test_pose_interpolation_linear_position_and_slerp():
    q0 = Rotation.identity().as_quat()
    q1 = Rotation.from_euler("z", 90, degrees=True).as_quat()
    tr = Trajectory("pose", 0, np.array([0, 0, 0, *q0]))
    tr.merge(np.array([S]), np.array([[1.0, 2.0, 0.0, *q1]]), now_ns=0)
    mid = tr.eval(S // 2)
    assert np.allclose(mid[:3], [0.5, 1.0, 0.0])
    assert Rotation.from_quat(mid[3:]).as_euler("xyz", degrees=True)[2] == pytest.approx(45.0)


def test_pose_merge_takes_short_way_for_flipped_quaternion():
    q = Rotation.from_euler("z", 10, degrees=True).as_quat()
    tr = Trajectory("pose", 0, np.array([0, 0, 0, 0, 0, 0, 1.0]))
    tr.merge(np.array([S]), np.array([[0, 0, 0, *(-q)]]), now_ns=0)  # same rotation, other hemisphere
    mid = tr.eval(S // 2)
    assert Rotation.from_quat(mid[3:]).as_euler("xyz", degrees=True)[2] == pytest.approx(5.0)


def test_pose_speed_limit():
    tr = Trajectory("pose", 0, np.array([0, 0, 0, 0, 0, 0, 1.0]))
    tr.merge(np.array([S // 10]), np.array([[0.5, 0, 0, 0, 0, 0, 1.0]]), now_ns=0, limits=Limits(vel=(0.25, 1.0)))
    assert tr.t[1] == 2 * S
