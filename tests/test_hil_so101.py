"""SO-101 leader -> SO-101 follower through the full stack on two fake Feetech buses (ptys): the
so101_leader teleop device, the controller, the arm node's safety path and the so101 arm driver.
The follower's fake servos reach their goal position at once, so what the follower reports is what
the stack commanded; the leader must refuse to engage while far, then the follower must track."""

import time

import numpy as np
import pytest
import yaml

from robot_stack.testing.feetech_bus import FakeFeetechBus
from robot_stack.apps.session import Session
from robot_stack.drivers.feetech import rad_to_ticks, ticks_to_rad
from robot_stack.teleop.leader import JointMap, save_joint_map
from conftest import wait_until
from robot_stack.testing import WaitTimeout

pytestmark = pytest.mark.processes
IDS = [1, 2, 3, 4, 5, 6]
SIGNS = (1.0, -1.0, 1.0, 1.0, -1.0)  # two joints mounted the other way round on the follower


def set_raw(bus, raw):
    for i, t in zip(IDS, rad_to_ticks(raw)):
        bus.set_position(i, int(t))


def test_so101_leader_drives_the_follower(tmp_path, run_dir, report):
    leader, follower = FakeFeetechBus(IDS), FakeFeetechBus(IDS, follow=True)
    calib = tmp_path / "calibration.yaml"
    save_joint_map(calib, "so101_leader", JointMap((0.0,) * 5, (1.0,) * 5, gripper_open=0.8, gripper_closed=0.0))
    offs = (0.1, -0.2, 0.05, 0.0, 0.3)  # the follower's servo zero is off the model's zero
    save_joint_map(calib, "so101_follower", JointMap(offs, SIGNS, gripper_open=1.0, gripper_closed=0.1), section="arms")
    set_raw(follower, np.r_[offs, 0.55])  # the follower rests at the model's zero, jaw half open
    set_raw(leader, np.r_[0.5, 0, 0, 0, 0, 0.4])  # the leader starts 0.5 rad away
    cfg = tmp_path / "so101.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "so101",
                "run_dir": str(run_dir),
                "nodes": {
                    "arm": {
                        "kind": "arm",
                        "params": {
                            "rate_hz": 100,
                            "state_rate_hz": 50,
                            "driver": {
                                "type": "so101",
                                "port": follower.port,
                                "calibration": str(calib),
                                "latency_timer_ms": 60,
                            },
                        },
                    },
                    "teleop": {
                        "kind": "teleop",
                        "params": {
                            "device": {
                                "type": "so101_leader",
                                "port": leader.port,
                                "calibration": str(calib),
                                "ramp_s": 0.5,
                                "latency_timer_ms": 60,
                            },
                            "rate_hz": 30,
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
        s.start(("robot/state", "heartbeat/teleop"), timeout_s=300)  # (a bound for a loaded machine)
        wait_until(lambda: s.heartbeat("teleop").get("engage_refusals", 0) > 0, 10, what="the leader refused to engage")
        hb = s.heartbeat("teleop")
        assert hb["engaged"] == 0 and hb["engage_refusals"] > 0
        np.testing.assert_allclose(s.state().q, 0.0, atol=2e-3)  # calibrated: the model's zero
        assert all(follower.torque(i) == 1 for i in IDS)  # the follower holds with torque on
        set_raw(leader, np.r_[0.02, 0, 0, 0, 0, 0.4])  # the operator matches the follower's pose
        wait_until(lambda: s.heartbeat("teleop").get("engaged", 0) == 1, 10, what="the leader engaged")
        goal = np.array([0.4, -0.5, 0.6, 0.3, -0.4])
        errs = []
        for a in np.linspace(0, 1, 60):  # the operator moves the leader over 2 s
            q_leader = np.r_[0.02, 0, 0, 0, 0] + a * (goal - np.r_[0.02, 0, 0, 0, 0])
            set_raw(leader, np.r_[q_leader, 0.8])  # jaw fully open
            time.sleep(1 / 30)  # (pacing: the operator's hand at 30 Hz)
            errs.append(np.abs(np.asarray(s.state().q) - q_leader).max())
        # the follower settles, and its servos' goals with it (bounded: a loaded CI machine runs the
        # 20 Hz controller late, and one rehearsal read the goals 14 mrad short after a fixed 4 s)
        try:
            wait_until(
                lambda: (
                    np.abs(np.asarray(s.state().q) - goal).max() <= 0.01
                    and np.abs(
                        ticks_to_rad([follower.goal(i) for i in IDS])[:5] - (goal / np.array(SIGNS) + offs)
                    ).max()
                    <= 0.005
                ),
                8,
                poll_s=0.1,
            )
        except WaitTimeout:
            pass  # asserted below, with the errors
        q = np.asarray(s.state().q)
        err = np.abs(q - goal)
        # the follower's servos got sign * q + offset: the calibration is applied on the way out
        raw = ticks_to_rad([follower.goal(i) for i in IDS])
        np.testing.assert_allclose(raw[:5], goal / np.array(SIGNS) + offs, atol=0.01)
        assert raw[5] == pytest.approx(1.0, abs=0.01)  # jaw open = the follower's open position
        report(
            f"SO-101 leader -> follower (fake Feetech buses): joint error after the move max {err.max():.4f} rad; "
            f"while moving (up to 0.3 rad/s, 20 Hz control) p50 {np.percentile(errs, 50):.3f} max {max(errs):.3f} rad"
        )
        assert err.max() < 0.02, (q, goal, s.heartbeat("teleop"), s.logs.tail(40))
        assert s.state().gripper_width == pytest.approx(0.06, abs=0.002)
    finally:
        s.close()
        leader.close()
        follower.close()
