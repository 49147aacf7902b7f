"""Demonstration collection on the sim through the full multi-process stack (issue: collection).

The scripted expert drives the teleop path (teleop node -> controller -> arm node) while the
recorder writes three episodes. Checked: stamps strictly increase in every stream; the recorder
kept every sample an independent subscriber saw (robot state within 2 %, camera frames without a
gap in the frame counter); the recorded images are the sim's renders of the recorded state; the
demonstrations succeed; replay of an episode through the controller reproduces its TCP path.
"""

import numpy as np
import pytest

from robot_stack.apps.collect import run_collect
from robot_stack.data.dataset import open_episode
from robot_stack.apps.demo import config_path, expert_successes
from robot_stack.apps.replay import replay_episode
from robot_stack.apps.session import Session
from robot_stack.comm.transport import Subscriber

from conftest import published_between

pytestmark = pytest.mark.processes

# tolerance of replay vs recording: on an idle 2-core machine 2.37 mm mean at equal times, 2.27 mm at
# the best constant lag (-5 ms); a loaded CI rehearsal gave 3.18 mm at equal times, so the bounds are
# 4 mm (best lag) and 5 mm (equal times). The max is the tail of the time alignment (at the expert's
# 0.15 m/s, 10 mm is 67 ms of path) and was 8-13 mm on this code and the previous one.
REPLAY_MEAN_MM, REPLAY_MAX_MM, REPLAY_RAW_MEAN_MM, REPLAY_MAX_LAG_MS = 4.0, 15.0, 5.0, 100.0


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("episodes")
    s = Session(
        config_path("sim_panda_reach.yaml"),
        sets={"nodes.recorder.params.root": str(out), "nodes.sim.params.seed": 7},
        only=["sim", "arm", "cam_scene", "cam_wrist", "teleop", "controller", "recorder"],
    )
    witness = None
    try:
        s.start(("robot/state", "camera/wrist", "camera/scene"))
        witness = Subscriber(
            [s.cfg.pub_endpoint("arm", s.rd)], ("robot/state",), history=100_000, hwm=100_000, name="witness"
        )
        res = run_collect(None, out, 3, max_episode_s=20, session=s)
        yield {"session": s, "res": res, "witness": witness.history("robot/state"), "out": out}
    finally:
        if witness is not None:
            witness.close()
        s.close()


def test_three_episodes_saved_and_successful(collected):
    res = collected["res"]
    assert len(res.saved) == 3 and res.discarded == 0
    assert expert_successes(res.saved) == 3
    for p in res.saved:
        ep = open_episode(p)
        assert ep.meta["task"] == "reach the cube" and ep.meta["config_name"] == "sim_panda_reach"
        assert ep.meta["rates_hz"]["arm"] == 500 and ep.meta["cameras"]["wrist"]["width"] == 320
        assert set(ep.streams()) == {"action", "camera/scene", "camera/wrist", "robot_state", "sim_objects", "teleop"}


def test_every_sample_kept_with_increasing_stamps(collected):
    for p in collected["res"].saved:
        ep = open_episode(p)
        for stream in ep.streams():
            st = ep.array(stream, "stamp_ns")[:]
            assert len(st) > 5, stream
            assert np.all(np.diff(st) > 0), f"{p.name}: {stream} stamps not increasing"
        rs = ep.array("robot_state", "stamp_ns")[:]
        at_least, at_most = published_between(collected["witness"], rs[0], rs[-1])
        assert at_least <= len(rs) <= at_most, (len(rs), at_least, at_most)  # every published state kept
        for cam in ("camera/wrist", "camera/scene"):
            fi = ep.array(cam, "frame_index")[:]
            missing = np.setdiff1d(np.arange(fi[0], fi[-1] + 1), fi)
            assert np.array_equal(fi, np.arange(fi[0], fi[0] + len(fi))), (
                f"{cam}: frames {missing[:10]} missing; recorder: dropped {ep.meta.get('dropped')}, {ep.meta.get('receive')}"
            )
        # teleop commands at 30 Hz and executed teleop waypoints at 10 Hz, each over its own span
        # (the teleop stream starts when the device does, up to a second after the robot state:
        # one CI run counted 96 commands against the robot state's 4.36 s)
        tt = ep.array("teleop", "stamp_ns")[:]
        dur = (tt[-1] - tt[0]) / 1e9
        assert abs(len(tt) - 1 - 30 * dur) < 0.2 * 30 * dur, (len(tt), dur)
        a = ep.load("action")
        assert np.all(a["origin"] == 1)  # teleop
        dur = (a["stamp_ns"][-1] - a["stamp_ns"][0]) / 1e9
        assert abs(len(a["stamp_ns"]) - 1 - 10 * dur) < 0.2 * 10 * dur, (len(a["stamp_ns"]), dur)


def test_recorded_images_are_the_sims_renders(collected):
    from robot_stack.drivers.sim_world import SimRenderer, SimWorld

    world = SimWorld()
    renderer = SimRenderer(world, 320, 240)
    try:
        diffs, other = [], []
        eps = [open_episode(p) for p in collected["res"].saved]
        for i, ep in enumerate(eps):
            rs, obj = ep.load("robot_state"), ep.load("sim_objects")
            img = ep.array("camera/wrist", "color")[-1]  # the arm rests at the goal at the end
            world.reset(obj["cube_pose"][-1])
            qpos = world.data.qpos.copy()
            qpos[world.arm.qpos] = rs["q"][-1]
            world.set_qpos(qpos)
            ref, _ = renderer.render("handcam_rgb")
            diffs.append(np.abs(ref.astype(int) - img).mean())
            other.append(np.abs(ref.astype(int) - eps[(i + 1) % len(eps)].array("camera/wrist", "color")[-1]).mean())
        assert max(diffs) < 2.0, diffs  # mean abs difference in 0..255
        assert min(other) > 3 * max(diffs), (diffs, other)  # and a different scene is clearly different
    finally:
        renderer.close()


def _replay_within_bounds(res) -> bool:
    return (
        res.mean_err_lag_mm < REPLAY_MEAN_MM
        and res.max_err_lag_mm < REPLAY_MAX_MM
        and res.mean_err_mm < REPLAY_RAW_MEAN_MM
        and abs(res.lag_ms) < REPLAY_MAX_LAG_MS
    )


def test_replay_reproduces_the_tcp_path(collected, report):
    """Replay reproduces the recorded TCP path. A replay is a timed run of the whole stack: a stall of
    the sim or arm process on a starved machine shifts a stretch of it (one CI proof saw a 34 mm
    maximum, where 7 other runs stayed under 13 mm), so a replay out of bounds is run once more and
    both are reported; a replay that is wrong fails both."""
    s = collected["session"]
    tries = []
    for _ in range(2):
        res = replay_episode(s, collected["res"].saved[0])
        # (what the arm refused or stopped for, should the path differ: collision stops, stale heartbeats)
        safety = {k: v for k, v in s.heartbeat("arm").items() if k.startswith("safety.") and v}
        overruns = {n: s.heartbeat(n).get("loop.overruns") for n in ("sim", "arm", "controller")}
        tries.append((res, safety, overruns))
        report(
            f"replay vs recording (try {len(tries)}): mean {res.mean_err_mm:.2f} mm, max {res.max_err_mm:.2f} mm "
            f"over {res.samples} states; at the best lag ({res.lag_ms:+.0f} ms) mean {res.mean_err_lag_mm:.2f} mm, "
            f"max {res.max_err_lag_mm:.2f} mm; arm safety counters since start {safety}; loop overruns {overruns}"
        )
        if _replay_within_bounds(res):
            break
    assert _replay_within_bounds(tries[-1][0]), tries
