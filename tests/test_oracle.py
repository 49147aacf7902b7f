"""The oracle policy (sim only) in-process: the task's expert rolled out into chunks from ground truth
at each observation's time, executed here by an ideal arm (the TCP reaches each action on time)."""

import numpy as np
import pytest

from robot_stack.drivers.sim_messages import ObjectState
from robot_stack.policies.oracle import OraclePolicy
from robot_stack.tasks.pick import PickTask
from robot_stack.tasks.reach import ReachTask

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # TCP pointing down (Panda home orientation), [qx qy qz qw]
START = np.r_[0.42, -0.02, 0.48, DOWN]
DT_NS = 100_000_000


class World:
    """A kinematic stand-in for the sim: the cube rides in a closed gripper around it, and falls to
    the table when the gripper opens."""

    def __init__(self, cube, target=(0.45, 0.2)):
        self.cube = np.asarray(cube, float)
        self.target = np.asarray(target, float)
        self.tcp = START.copy()
        self.holding = False
        self.seen_t: list[int] = []

    def objects(self, t_ns):
        self.seen_t.append(t_ns)
        return ObjectState(cube_pose=np.r_[self.cube, 0, 0, 0, 1.0], target_xy=self.target, target_half=0.05)

    def execute(self, action):
        self.tcp = np.asarray(action[:7], float)
        closed = action[7] < 0.5
        if closed and not self.holding and np.linalg.norm(self.cube - self.tcp[:3]) < 0.02:
            self.holding, self.offset = True, self.cube - self.tcp[:3]
        if not closed and self.holding:
            self.holding = False
            self.cube = np.r_[self.cube[:2], 0.02]
        if self.holding:
            self.cube = self.tcp[:3] + self.offset


def run(policy, world, s, requests, t0=0):
    """Receding horizon: request, execute s actions on the ideal arm, repeat; returns the last time."""
    t = t0
    for _ in range(requests):
        policy.observed_at([t])
        chunk = policy.predict({"ee_pose": np.tile(world.tcp, (2, 1)).astype(np.float32)})
        for a in chunk[:s]:
            world.execute(a)
        t += s * DT_NS
    return t


@pytest.mark.parametrize("s", [1, 4, 8, 16])
def test_the_oracle_reaches_the_cube_with_any_execution_horizon(s):
    task, w = ReachTask(), World([0.52, 0.08, 0.02])
    pol = OraclePolicy(task, w.objects, speed=0.15, horizon=16, dt=0.1)
    run(pol, w, s, requests=int(np.ceil(60 / s)))
    assert task.success(w.tcp[:3], w.cube, w.cube)
    assert np.linalg.norm(w.tcp[:3] - (w.cube + [0, 0, task.grasp_height])) < 1e-6


@pytest.mark.parametrize("s", [1, 8, 50])
def test_the_oracle_picks_and_places_across_chunks(s):
    """The pick expert's phases carry over from chunk to chunk (with s = 1 each chunk executes one
    action): the cube ends in the target square, released."""
    task, w = PickTask(), World([0.55, -0.05, 0.02])
    pol = OraclePolicy(task, w.objects, speed=0.15, horizon=50, dt=0.1)
    run(pol, w, s, requests=int(np.ceil(200 / s)))
    assert not w.holding and abs(w.cube[0] - 0.45) <= 0.05 and abs(w.cube[1] - 0.2) <= 0.05


def test_each_chunk_is_planned_at_its_observations_time():
    task, w = ReachTask(), World([0.52, 0.08, 0.02])
    pol = OraclePolicy(task, w.objects, horizon=16, dt=0.1)
    run(pol, w, 8, requests=3, t0=5_000_000_000)
    assert w.seen_t == [5_000_000_000, 5_800_000_000, 6_600_000_000]


def test_a_pause_starts_a_new_episode_and_a_prefix_is_kept():
    task, w = PickTask(), World([0.55, -0.05, 0.02])
    pol = OraclePolicy(task, w.objects, horizon=16, dt=0.1)
    t = run(pol, w, 8, requests=6)
    assert pol._expert_at(t).phase > 0  # within the episode: the expert is under way
    assert pol._expert_at(t + 10 * 10**9).phase == 0  # after a 10 s pause: a new episode
    prefix = np.tile(np.r_[0.3, 0.1, 0.4, DOWN, 1.0], (5, 1)).astype(np.float32)
    pol.observed_at([t])
    out = pol.predict({"ee_pose": np.tile(w.tcp, (2, 1)).astype(np.float32)}, committed_prefix=prefix, frozen=3)
    np.testing.assert_array_equal(out[:3], prefix[:3])
    assert pol.last_frozen == 3 and not np.allclose(out[3], prefix[3])


def test_noise_is_added_and_the_lift_task_is_refused():
    task, w = ReachTask(), World([0.52, 0.08, 0.02])
    clean = OraclePolicy(task, w.objects, horizon=16)
    noisy = OraclePolicy(task, w.objects, horizon=16, noise_std=0.005, seed=1)
    obs = {"ee_pose": np.tile(START, (2, 1)).astype(np.float32)}
    for p in (clean, noisy):
        p.observed_at([0])
    d = noisy.predict(obs)[:, :3] - clean.predict(obs)[:, :3]
    assert 0.003 < float(np.std(d)) < 0.007
    from robot_stack.tasks.lift import LiftTask

    with pytest.raises(ValueError, match="no single-arm expert"):
        OraclePolicy(LiftTask(), w.objects)
