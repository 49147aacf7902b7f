"""Leader arm teleop through the full stack: fake Dynamixel bus (pty) -> teleop node -> controller ->
arm node -> sim. The leader must refuse to engage while far from the follower, then the follower
must track the leader's joints."""

import time

import numpy as np
import pytest
import yaml

from robot_stack.testing.dynamixel_bus import FakeDynamixelBus as FakeBus
from robot_stack.drivers.dynamixel import rad_to_ticks
from robot_stack.drivers.sim_model import HOME_Q
from robot_stack.apps.session import Session
from robot_stack.teleop.leader import JointMap, save_joint_map

pytestmark = pytest.mark.processes
IDS = [1, 2, 3, 4, 5, 6, 7]


def set_leader(bus, q):
    for i, t in zip(IDS, rad_to_ticks(q)):
        bus.set_position(i, int(t))


def test_leader_refuses_far_then_follower_tracks(tmp_path, run_dir, report):
    bus = FakeBus(IDS)
    calib = tmp_path / "calibration.yaml"
    save_joint_map(calib, "leader", JointMap(offsets=(0.0,) * 7, signs=(1.0,) * 7))
    far = HOME_Q + np.r_[0.5, 0, 0, 0, 0, 0, 0]
    set_leader(bus, far)
    cfg = tmp_path / "leader.yaml"
    cfg.write_text(yaml.safe_dump({"name": "leader", "run_dir": str(run_dir), "nodes": {
        "sim": {"kind": "sim_world"}, "arm": {"kind": "arm"},
        "teleop": {"kind": "teleop", "params": {"device": {"type": "leader", "port": bus.port, "calibration": str(calib),
                                                           "ramp_s": 0.5, "latency_timer_ms": 60}, "rate_hz": 50}},
        "controller": {"kind": "controller", "params": {"source": "teleop", "teleop": "teleop", "rate_hz": 20}}}}))
    s = Session(cfg)
    try:
        s.start(("robot/state", "heartbeat/teleop"))
        time.sleep(1.5)
        hb = s.heartbeat("teleop")
        assert hb["engaged"] == 0 and hb["engage_refusals"] > 0 and hb["commands"] == 0
        np.testing.assert_allclose(s.state().q, HOME_Q, atol=0.02)  # the follower did not move
        set_leader(bus, HOME_Q + 0.03)  # the operator matches the follower's pose
        time.sleep(1.5)
        assert s.heartbeat("teleop")["engaged"] == 1
        goal = HOME_Q + np.r_[0.3, 0.2, 0.0, 0.2, 0.0, -0.2, 0.3]
        for a in np.linspace(0, 1, 60):  # the operator moves the leader over 2 s
            set_leader(bus, HOME_Q + 0.03 + a * (goal - HOME_Q - 0.03))
            time.sleep(1 / 30)
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and np.abs(np.asarray(s.state().q) - goal).max() > 0.01:
            time.sleep(0.1)
        q = np.asarray(s.state().q)
        err = np.abs(q - goal)
        report(f"leader -> follower joint error after the move: max {err.max():.4f} rad")
        assert err.max() < 0.02, (q, goal, s.heartbeat("teleop"), s.logs.tail(40))
        acts = [m for m in s.sub.history("controller/action") if m.space == "joint"]
        assert acts and all(m.origin == "teleop" for m in acts)
    finally:
        s.close()
        bus.close()
