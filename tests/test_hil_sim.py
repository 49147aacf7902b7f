"""Hardware-in-the-loop on the sim backend: real processes, real sockets, real physics.

One stack (sim world, arm node, two sim camera nodes) is started for the module; each test drives
it through the same messages a controller would use.
"""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robot_stack.runtime.arm_client import ArmClient
from robot_stack.control.paths import polyline, square, straight_line
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.config import load_config
from robot_stack.comm.transport import Subscriber

from conftest import REPO, launched, wait_past, wait_samples, wait_until
from robot_stack.testing.setups import node, setup, write_setup

pytestmark = pytest.mark.processes


def hil_setup(run_dir) -> dict:
    """The module's stack: sim world, arm node, two sim cameras, the viewer writing an .rrd file."""

    def sim_cam(camera, camera_id):
        return node(
            "camera", driver={"type": "sim", "camera": camera}, camera_id=camera_id, width=160, height=120, rate_hz=10
        )

    return setup(
        "hil",
        run_dir,
        sim=node("sim_world", rate_hz=500, state_rate_hz=30),
        # heartbeat 1 s: on the 2-core CI machine a test's 20 Hz heartbeat thread was once kept off
        # the CPU for > 500 ms mid-square (the arm then holds, as it must); its value is not under test
        arm=node(
            "arm",
            rate_hz=500,
            state_rate_hz=250,
            safety={"heartbeat_timeout_s": 1.0, "max_jump_ee": 0.08, "on_limit": "refuse"},
        ),
        cam_scene=sim_cam("scene", "scene"),
        cam_wrist=sim_cam("handcam_rgb", "wrist"),
        viewer=node(
            "viewer",
            {"critical": False},
            watch=["arm", "cam_scene", "cam_wrist"],
            rrd_path=f"{run_dir}/view.rrd",
            rate_hz=5,
        ),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import shutil
    import tempfile
    from pathlib import Path

    run_dir = Path(tempfile.mkdtemp(prefix="rs-hil-"))
    cfg_path = tmp_path_factory.mktemp("hil") / "hil.yaml"
    write_setup(cfg_path, hil_setup(run_dir))
    try:
        with launched(cfg_path) as (launcher, out):
            cfg = load_config(cfg_path)
            state = Subscriber(
                [cfg.pub_endpoint("arm", run_dir)], ("robot/state", "heartbeat"), history=2000, name="test-arm"
            )
            cams = Subscriber(
                [cfg.pub_endpoint("cam_scene", run_dir), cfg.pub_endpoint("cam_wrist", run_dir)],
                ("camera/",),
                name="test-cams",
            )
            try:
                assert state.wait_for("robot/state", 60) is not None, out.tail()
                yield {
                    "cfg": cfg,
                    "run_dir": run_dir,
                    "state": state,
                    "cams": cams,
                    "launcher": launcher,
                    "out": out,
                    "cfg_path": cfg_path,
                }
            finally:
                state.close()
                cams.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def arm_metrics(stack):
    hb = stack["state"].wait_for("heartbeat/arm", 5, newer_than_seq=stack["state"].latest("heartbeat/arm").seq)
    return hb.metrics


def current_pose(stack):
    return np.array(stack["state"].latest("robot/state").ee_pose)


def still(stack):
    st = stack["state"].latest("robot/state")
    return np.abs(st.dq).max() < 0.01 and st.mode == "hold"


def still_dq(stack):
    return np.abs(stack["state"].latest("robot/state").dq).max() < 0.01


def wait_still(stack, timeout=10.0):
    wait_until(lambda: still(stack), timeout, what="the arm at rest")


def dist_to_polyline(p, corners):
    best = np.inf
    for a, b in zip(corners[:-1], corners[1:]):
        ab = b - a
        s = np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1)
        best = min(best, np.linalg.norm(p - (a + s * ab)))
    return best


def test_cameras_publish_rgbd_with_true_intrinsics(stack):
    for cam in ("scene", "wrist"):
        f = stack["cams"].wait_for(f"camera/{cam}", 20)
        assert f is not None, f"no frames from {cam}"
        assert f.color.shape == (120, 160, 3) and f.depth.shape == (120, 160) and f.depth.dtype == np.uint16
        assert f.depth_scale == 0.001
        assert f.K[0, 0] == pytest.approx(f.K[1, 1]) and f.K[0, 2] == pytest.approx(79.5)
        assert f.color.std() > 5  # a real image, not blank
    # the scene camera's optical axis hits the table: centre-pixel depth = z-distance to that point
    from robot_stack.drivers.sim_model import SceneSpec

    sc = SceneSpec()
    f = stack["cams"].latest("camera/scene")
    d = f.depth[60, 80] * 0.001
    pos, axis = np.array(sc.scene_cam_pos), np.array(sc.scene_cam_target) - np.array(sc.scene_cam_pos)
    axis /= np.linalg.norm(axis)
    assert d == pytest.approx(pos[2] / -axis[2], rel=0.03)


def test_square_tracking_and_servo_jitter(stack):
    wait_still(stack)
    stale_before = arm_metrics(stack).get("safety.heartbeat_stale", 0)
    start = current_pose(stack)
    corners = square(np.array([0.45, 0.0, 0.30]), 0.15)
    client = ArmClient(stack["cfg"], stack["run_dir"], source="test_square")
    try:
        # go to the first corner and settle, then around the square at 0.1 m/s
        t_end = polyline(client, start, corners[:1], now_ns(), speed=0.1)
        # under load the approach can end late: the square starts once the TCP is at its corner
        # (one CI run started 2 cm short, and the approach's tail counted as square)
        wait_past(
            t_end, lambda: np.linalg.norm(current_pose(stack)[:3] - corners[0][:3]) < 0.002, what="the first corner"
        )
        t_square = now_ns()
        t_end = polyline(client, current_pose(stack), corners[1:], t_square, speed=0.1)
        wait_past(t_end, lambda: still(stack), what="the square's end, at rest")
        samples = [m for m in stack["state"].history("robot/state") if m.stamp_ns >= t_square]
    finally:
        client.close()
    pos = np.array([m.ee_pose[:3] for m in samples])
    assert len(pos) > 500
    path_err = np.array([dist_to_polyline(p, corners) for p in pos])
    end_err = np.linalg.norm(pos[-1] - corners[-1])
    extent = pos.max(0) - pos.min(0)
    m = arm_metrics(stack)
    print(
        f"\nsquare 150 mm at 0.1 m/s: path error mean {path_err.mean() * 1e3:.2f} mm, max {path_err.max() * 1e3:.2f} mm, "
        f"final {end_err * 1e3:.2f} mm, extent {np.round(extent * 1e3, 1).tolist()} mm; servo period "
        f"p50 {m['loop.period_p50_s'] * 1e3:.3f} ms p99 {m['loop.period_p99_s'] * 1e3:.3f} ms "
        f"max {m['loop.period_max_s'] * 1e3:.3f} ms, overruns {m['loop.overruns']:.0f}/{m['loop.periods']:.0f}"
    )
    assert m.get("safety.heartbeat_stale", 0) == stale_before, (
        f"the arm held: the test's heartbeat thread was starved (longest gap {client.max_beat_gap_s * 1e3:.0f} ms)"
    )
    assert extent[0] == pytest.approx(0.15, abs=0.01) and extent[1] == pytest.approx(0.15, abs=0.01)
    assert path_err.mean() < 0.005 and path_err.max() < 0.02 and end_err < 0.005
    assert m["loop.period_p50_s"] == pytest.approx(0.002, rel=0.1)
    assert m["loop.overruns"] < 0.5 * m["loop.periods"]


def _refused(stack, positions, check):
    wait_still(stack)
    before_pose = current_pose(stack)
    before = arm_metrics(stack).get(f"safety.{check}", 0.0)
    client = ArmClient(stack["cfg"], stack["run_dir"], source="test_fault")
    try:
        t = now_ns()
        stamps = t + (np.arange(1, len(positions) + 1) * 0.05e9).astype(np.int64)
        client.send_schedule(stamps, positions, space="ee")
        wait_until(lambda: arm_metrics(stack).get(f"safety.{check}", 0.0) > before, 10, what=f"{check} counted")
        wait_samples(stack["state"], "robot/state", 100)  # 0.4 s of states after the refusal
    finally:
        client.close()
    after = arm_metrics(stack).get(f"safety.{check}", 0.0)
    moved = np.linalg.norm(current_pose(stack)[:3] - before_pose[:3])
    assert after == before + 1, f"{check} not counted"
    assert moved < 0.001, f"arm moved {moved * 1e3:.1f} mm after a refused schedule"


def test_nan_waypoints_refused(stack):
    p = current_pose(stack)
    bad = np.repeat(p[None], 3, 0)
    bad[1, 0] = np.nan
    _refused(stack, bad, "non_finite")


def test_out_of_workspace_refused(stack):
    p = current_pose(stack)
    bad = np.repeat(p[None], 20, 0)
    bad[:, 2] = np.linspace(p[2], -0.1, 20)  # through the table
    _refused(stack, bad, "workspace")


def test_huge_jump_refused(stack):
    p = current_pose(stack)
    bad = p[None].copy()
    bad[0, 1] += 0.3
    _refused(stack, bad, "jump")


SENDER = """
import signal, sys, numpy as np
from pathlib import Path
from robot_stack.runtime.config import load_config
from robot_stack.runtime.arm_client import ArmClient
from robot_stack.control.paths import polyline, square, straight_line
from robot_stack.runtime.clock import now_ns
from robot_stack.comm.transport import Subscriber
cfg = load_config(sys.argv[1]); rd = Path(sys.argv[2])
sub = Subscriber([cfg.pub_endpoint("arm", rd)], ("robot/state",))
p = np.array(sub.wait_for("robot/state", 10).ee_pose)
goal = p.copy(); goal[1] += 0.3
client = ArmClient(cfg, rd, source="doomed_controller")
stamps, poses = straight_line(p, goal, now_ns(), speed=0.05)
client.send_schedule(stamps, poses, space="ee")
print("sent", flush=True)
signal.pause()  # heartbeating on its thread until the test kills it
"""


def test_killed_sender_makes_arm_hold_within_timeout(stack):
    wait_still(stack)
    proc = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(stack["cfg_path"]), str(stack["run_dir"])], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert proc.stdout.readline().strip() == b"sent"
        wait_until(lambda: stack["state"].latest("robot/state").mode == "track", 5, what="the arm tracking")
        wait_samples(stack["state"], "robot/state", 125)  # 0.5 s of tracking
        proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait()
        wait_until(
            lambda: stack["state"].latest("robot/state").mode == "hold",
            3,
            poll_s=0.005,
            what="the arm holding after its sender died",
        )
        latency = time.monotonic() - t_kill
        wait_until(lambda: still(stack), 5, what="the arm at rest")
        p1 = current_pose(stack)
        wait_samples(stack["state"], "robot/state", 125)  # 0.5 s at rest
        p2 = current_pose(stack)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\narm held {latency * 1e3:.0f} ms after its sender was killed (timeout 1000 ms)")
    assert 0.9 < latency < 1.7  # the last heartbeat left up to 50 ms before the kill
    assert np.linalg.norm(p2[:3] - p1[:3]) < 0.0005  # standing still
    assert arm_metrics(stack)["safety.heartbeat_stale"] >= 1


def test_estop_stops_at_once_and_refuses_until_release(stack):
    wait_still(stack)
    client = ArmClient(stack["cfg"], stack["run_dir"], source="test_estop")
    try:
        p = current_pose(stack)
        goal = p.copy()
        goal[1] -= 0.2
        stamps, poses = straight_line(p, goal, now_ns(), speed=0.1)
        client.send_schedule(stamps, poses, space="ee")
        wait_until(lambda: np.linalg.norm(current_pose(stack)[:3] - p[:3]) > 0.03, 10, what="the arm 30 mm on its way")
        client.estop("test")
        wait_until(
            lambda: stack["state"].latest("robot/state").mode == "estop" and still_dq(stack),
            2,
            what="the arm stopped in e-stop",
        )
        p1 = current_pose(stack)
        wait_samples(stack["state"], "robot/state", 125)  # 0.5 s in e-stop
        assert np.linalg.norm(current_pose(stack)[:3] - p1[:3]) < 0.001
        assert abs(p1[1] - goal[1]) > 0.05  # stopped well before the goal
        refused = arm_metrics(stack).get("safety.refused_estop", 0)
        stamps, poses = straight_line(p1, goal, now_ns(), speed=0.1)
        client.send_schedule(stamps, poses, space="ee")
        wait_until(lambda: arm_metrics(stack).get("safety.refused_estop", 0) > refused, 5, what="the schedule refused")
        assert np.linalg.norm(current_pose(stack)[:3] - p1[:3]) < 0.001  # refused while e-stopped
        client.release()  # this sender is not authorised to release (safety.estop_release)
        wait_until(
            lambda: arm_metrics(stack).get("safety.estop_release_refused", 0) >= 1, 5, what="the release refused"
        )
        assert stack["state"].latest("robot/state").mode == "estop"
        cli = ArmClient(
            stack["cfg"], stack["run_dir"], source="cli_estop", heartbeat_hz=0
        )  # as `robot-stack estop --release`
        cli.release()
        cli.close()
        wait_until(lambda: stack["state"].latest("robot/state").mode == "hold", 5, what="the e-stop released")
        stamps, poses = straight_line(current_pose(stack), goal, now_ns(), speed=0.1)
        client.send_schedule(stamps, poses, space="ee")
        wait_past(int(stamps[-1]), lambda: np.linalg.norm(current_pose(stack)[:3] - goal[:3]) < 0.005, what="the goal")
        assert arm_metrics(stack)["safety.refused_estop"] >= 1
    finally:
        client.close()


def test_live_view_recording_has_cameras_and_robot(stack):
    """The viewer node wrote camera images, depth, intrinsics and robot state to its .rrd file."""
    import os

    rrd = stack["run_dir"] / "view.rrd"
    wait_until(lambda: rrd.exists() and rrd.stat().st_size >= 50_000, 20, poll_s=0.2, what="the viewer's .rrd file")
    out = subprocess.run(
        [sys.executable, "-m", "rerun", "rrd", "print", str(rrd)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, RERUN_ANALYTICS="0"),
    )
    text = out.stdout + out.stderr
    for entity in ("/camera/scene/color", "/camera/scene/depth", "/camera/wrist/color", "/robot/tcp", "/camera/scene"):
        assert entity in text, text[-2000:]
    assert "Pinhole" in text and "DepthImage" in text


def test_robot_state_carries_the_sim_wrist_wrench(stack):
    """The sim world's wrist F/T reaches RobotState through the arm node: (6,), finite, and zero in
    free space (nothing touches the gripper at home)."""
    st = stack["state"].wait_for("robot/state", 10)
    assert st is not None and st.wrench is not None and st.wrench.shape == (6,)
    assert np.all(np.isfinite(st.wrench)) and np.abs(st.wrench).max() < 1e-6
