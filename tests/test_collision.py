"""Collision checks on the robot model (robot_stack/control/collision.py): links against the
table with the TCP inside the workspace box, the arm against itself, paths, and the speed
profile near an obstacle. In-process, MuJoCo only."""

from __future__ import annotations

import numpy as np
import pytest

from robot_stack.control.collision import CollisionChecker, CollisionConfig, Obstacle
from robot_stack.control.robot_model import RobotModel
from robot_stack.control.safety import SafetyConfig


@pytest.fixture(scope="module")
def panda():
    return RobotModel.load("panda_robotiq")


@pytest.fixture(scope="module")
def checker(panda):
    return CollisionChecker(panda, CollisionConfig(enabled=True))


#: a Panda configuration whose wrist (link6) is 14 mm into the table while the TCP stays inside
#: the default workspace box, 0.28 m above the table (found by sampling the joint space)
THROUGH_TABLE = np.array([2.662, -1.186, -2.385, -2.156, 0.827, 0.999, 1.193])


def _in_box(p, s=SafetyConfig()):
    return bool(np.all(p >= s.workspace_min) and np.all(p <= s.workspace_max))


def test_a_link_in_the_table_is_refused_though_the_tcp_is_in_the_box(panda, checker):
    tcp = panda.fk(THROUGH_TABLE)[:3]
    assert _in_box(tcp) and tcp[2] > 0.2
    c = checker.violation(THROUGH_TABLE)
    assert c is not None and c.group == "scene" and c.b == "table" and c.a.startswith("link")
    assert c.distance < 0 and c.clearance == 0.02
    assert "mm from table (clearance 20 mm)" in c.describe()


def test_a_path_into_the_table_is_refused_at_its_segment(panda, checker):
    path = np.linspace(panda.home_q, THROUGH_TABLE, 5)
    hit = checker.check_path(path)
    assert hit is not None
    i, c = hit
    assert 1 <= i <= 4 and c.group in ("scene", "fingers", "self")
    assert checker.check_path(path[:1]) is None  # home alone is fine


def test_a_path_that_keeps_twice_the_clearance_is_accepted(panda, checker):
    goal = panda.ik(np.r_[0.5, 0.1, 0.25, panda.home_pose[3:]], panda.home_q)
    path = np.linspace(panda.home_q, goal, 8)
    assert checker.check_path(path) is None
    dense = np.linspace(panda.home_q, goal, 200)
    scene = CollisionChecker(panda, CollisionConfig(enabled=True, clearance_self_m=0.0, slowdown_m=1.0))
    margins = [scene.closest(q) for q in dense]
    assert min(c.distance for c in margins if c.group == "scene") >= 2 * 0.02  # the links' distance to the table


def test_the_arm_folded_into_itself_is_refused(panda, checker):
    rng = np.random.default_rng(1)
    for _ in range(2000):  # sample until a self-collision with the links well above the table
        q = rng.uniform(panda.lower, panda.upper)
        c = checker.closest(q)
        if c is not None and c.group == "self" and c.distance < 0:
            break
    else:
        pytest.fail("no self-collision in 2000 samples")
    v = checker.violation(q)
    assert v is not None and v.group == "self" and v.a != v.b


def test_speed_scales_linearly_between_the_slowdown_distance_and_the_clearance(panda):
    """An obstacle ball beside the gripper at home, brought closer step by step: the speed factor
    is 1 while the margin exceeds the gripper's slow-down distance (``slowdown_fingers_m``, not
    the links' ``slowdown_m``), margin / that distance below it, 0 at the clearance."""
    tcp = panda.fk(panda.home_q)[:3]
    scales, margins = [], []
    for h in np.linspace(0.25, 0.0, 26):
        ob = Obstacle(name="ball", shape="sphere", pos=tuple(tcp + [0, 0.05 + h, 0.05]), size=(0.03,))
        cfg = CollisionConfig(
            enabled=True,
            obstacles=[ob],
            table_z=None,
            clearance_self_m=0.0,
            clearance_fingers_m=0.01,
            slowdown_fingers_m=0.05,
            slowdown_m=0.2,
        )
        cc = CollisionChecker(panda, cfg)
        c = cc.closest(panda.home_q)
        assert c is None or c.group == "fingers"
        scales.append(cc.scale_of(c))
        margins.append(np.inf if c is None else c.margin)
    scales, margins = np.array(scales), np.array(margins)
    assert np.all(np.diff(scales) <= 1e-12)  # never faster as the ball comes closer
    far, near, inside = margins >= 0.05, (margins > 0) & (margins < 0.05), margins <= 0
    assert far.any() and near.sum() >= 3 and inside.any()
    np.testing.assert_allclose(scales[far], 1.0)
    np.testing.assert_allclose(scales[near], margins[near] / 0.05, atol=1e-9)
    np.testing.assert_allclose(scales[inside], 0.0)


def test_a_bad_obstacle_is_named():
    with pytest.raises(ValueError, match="obstacle wall: a box takes 3 positive sizes"):
        Obstacle(name="wall", shape="box", size=(0.1, 0.2))


def test_the_pick_experts_grasps_keep_every_default_clearance(panda):
    """The robot description's defaults let the scripted pick expert do what it does: two
    episodes in MuJoCo physics (a missed first grasp and its retry included), every posture
    checked: no pair closer than its clearance, and the only slowed pairs are the gripper over
    the table at the bottom of a grasp (pads about 11 mm over it)."""
    from test_pick import _sim_episode

    from robot_stack.control.robot_model import load_description
    from robot_stack.drivers.sim_world import SimWorld
    from robot_stack.tasks.pick import PickExpert, PickTask

    desc, _ = load_description("panda_robotiq")
    cfg = CollisionConfig().over(desc.collision)
    assert cfg.enabled and cfg.table_z == 0.0
    checker = CollisionChecker(panda, cfg)
    world = SimWorld(seed=7)
    qs, step = [], world.step

    def recorded(n):
        step(n)
        qs.append(world.data.qpos[world.arm.qpos].copy())

    world.step = recorded
    for seed in range(2):
        _sim_episode(world, panda, PickExpert(PickTask(), seed=seed, miss_rate=0.5), seconds=20)
    contacts = [checker.closest(q) for q in qs[::2]]
    near = [c for c in contacts if c is not None]
    assert len(qs) > 1000 and min(c.margin for c in near) > 0.004
    slowed = {c.group for c in near if checker.scale_of(c) < 1.0}
    assert slowed == {"fingers"}, slowed
    assert min(c.distance for c in near if c.group == "fingers") < 0.02  # the grasps did reach down


def test_the_other_arms_planned_joints_are_kept_clear_as_well_as_its_measured_ones(panda):
    """The right arm's wrist at INTO_LEFT (tests/test_arm_node.py) clears the left arm leaning back,
    and comes 14.5 mm into it at home. With the left arm leaning back but headed home (its
    ``q_plan``), the same configuration is a violation against the planned copy; once the plan is
    where the arm is, the planned copy is no longer checked."""
    from robot_stack.control.collision import OtherArm

    into_left = np.array([-0.87, -1.458, 1.097, -1.189, -0.121, 1.807, 1.097])
    cfg = CollisionConfig(table_z=0.0, arms=[OtherArm(node="left", robot="panda_robotiq", base=(0.0, 0.8, 0.0, 0.0))])
    cc = CollisionChecker(panda, cfg)
    back = panda.home_q.copy()
    back[1] -= 0.6  # the left arm's upper arm leans back, away from the right arm's wrist
    cc.set_other("left", back)
    c = cc.closest(into_left)
    assert c is None or c.margin > 0
    cc.set_other("left", back, panda.home_q)  # headed home
    v = cc.violation(into_left)
    assert v is not None and v.b.startswith("left/plan/") and v.distance < 0
    cc.set_other("left", back, back)  # still: only the measured copy counts
    c = cc.closest(into_left)
    assert c is None or (c.margin > 0 and not c.b.startswith("left/plan/"))


def test_the_braking_motion_bounds_how_much_closer_every_pair_comes(panda, checker):
    """``motion_bound(q, q + dq)`` over 40 postures and small moves (each joint up to 0.03 rad, a
    brake from about 0.5 rad/s): no pair comes closer by more than its bound (exact distance
    queries), and within the arm
    the relative bound is tighter than adding both links' own motions (which stopped the reach
    demo's home moves)."""
    rng = np.random.default_rng(5)
    tighter, n_pairs = 0, 0
    for _ in range(40):
        q = np.clip(panda.home_q + rng.uniform(-0.8, 0.8, panda.n_joints), panda.lower, panda.upper)
        q2 = np.clip(q + rng.uniform(-0.03, 0.03, panda.n_joints), panda.lower, panda.upper)
        bound = checker.motion_bound(q, q2)
        d1, fb1 = _distances(checker, q)
        d2, fb2 = _distances(checker, q2)
        # distances under the query's cap on both sides, and exact ones: libccd's fallback (for
        # MuJoCo's spurious zeros) underestimates by up to centimetres, which no bound covers
        near = (d1 < 0.3) & (d2 < 0.3) & ~fb1 & ~fb2
        assert np.all((d1 - d2)[near] <= bound[near] + 1e-4), np.max((d1 - d2 - bound)[near])
        s = checker._self_pairs
        both_move = checker._own_mask[checker._g1[s]] & checker._own_mask[checker._g2[s]]
        tighter += int(np.sum((bound[s] < 0.999 * _absolute_sum(checker, q, q2)[s])[both_move]))
        n_pairs += int(both_move.sum())
    assert tighter > 0.9 * n_pairs, (tighter, n_pairs)


def _distances(checker, q):
    """(pairs,) distances at ``q`` (capped at 1 m) and whether each fell back to libccd."""
    checker._set(q)
    out, fell = [], []
    for g1, g2, _, _ in checker.pairs:
        f = checker.fallbacks
        out.append(checker._distance(g1, g2, 1.0))
        fell.append(checker.fallbacks > f)
    return np.array(out), np.array(fell)


def _absolute_sum(checker, q_a, q_b):
    """(pairs,) the sum of both geoms' own motions (no cancelling within the arm)."""
    r = checker.m.geom_rbound
    checker._set(q_a)
    xa, ra = checker.d.geom_xpos.copy(), checker.d.geom_xmat.reshape(-1, 3, 3).copy()
    checker._set(q_b)
    xb, rb = checker.d.geom_xpos, checker.d.geom_xmat.reshape(-1, 3, 3)
    ang = np.arccos(np.clip((np.einsum("kij,kij->k", ra, rb) - 1) / 2, -1, 1))
    moved = np.where(checker._own_mask, np.linalg.norm(xb - xa, axis=1) + ang * r, 0.0)
    return moved[checker._g1] + moved[checker._g2]
