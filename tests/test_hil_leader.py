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
from conftest import wait_until
from robot_stack.testing import WaitTimeout

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
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "leader",
                "run_dir": str(run_dir),
                "nodes": {
                    "sim": {"kind": "sim_world"},
                    "arm": {"kind": "arm"},
                    "teleop": {
                        "kind": "teleop",
                        "params": {
                            "device": {
                                "type": "leader",
                                "port": bus.port,
                                "calibration": str(calib),
                                "ramp_s": 0.5,
                                "latency_timer_ms": 60,
                            },
                            "rate_hz": 50,
                        },
                    },
                    "controller": {
                        "kind": "controller",
                        "params": {"source": "teleop", "teleop": "teleop", "rate_hz": 20},
                    },
                },
            }
        )
    )
    s = Session(cfg)
    try:
        s.start(("robot/state", "heartbeat/teleop"))
        wait_until(lambda: s.heartbeat("teleop").get("engage_refusals", 0) > 0, 10, what="the leader refused to engage")
        hb = s.heartbeat("teleop")
        assert hb["engaged"] == 0 and hb["engage_refusals"] > 0 and hb["commands"] == 0
        np.testing.assert_allclose(s.state().q, HOME_Q, atol=0.02)  # the follower did not move
        set_leader(bus, HOME_Q + 0.03)  # the operator matches the follower's pose
        wait_until(lambda: s.heartbeat("teleop").get("engaged", 0) == 1, 10, what="the leader engaged")
        goal = HOME_Q + np.r_[0.3, 0.2, 0.0, 0.2, 0.0, -0.2, 0.3]
        for a in np.linspace(0, 1, 60):  # the operator moves the leader over 2 s
            set_leader(bus, HOME_Q + 0.03 + a * (goal - HOME_Q - 0.03))
            time.sleep(1 / 30)  # (pacing: the operator's hand at 30 Hz)
        try:
            wait_until(lambda: np.abs(np.asarray(s.state().q) - goal).max() <= 0.01, 4, poll_s=0.1)
        except WaitTimeout:
            pass  # asserted below, with the error
        q = np.asarray(s.state().q)
        err = np.abs(q - goal)
        report(f"leader -> follower joint error after the move: max {err.max():.4f} rad")
        assert err.max() < 0.02, (q, goal, s.heartbeat("teleop"), s.logs.tail(40))
        acts = [m for m in s.sub.history("controller/action") if m.space == "joint"]
        assert acts and all(m.origin == "teleop" for m in acts)
    finally:
        s.close()
        bus.close()
