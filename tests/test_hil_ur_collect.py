"""The reach task's collect step on the emulated UR5e (configs/ur5e_emulated.yaml): the scripted
expert drives teleop -> controller -> arm node -> ur_rtde -> the UR controller emulator, and the
recorder writes three episodes, every sample stamped and counted as on the sim
(tests/test_hil_collect.py checks the same on the simulated Panda)."""

import numpy as np
import pytest

from robot_stack.apps.collect import run_collect
from robot_stack.apps.demo import config_path, expert_successes
from robot_stack.apps.session import Session
from robot_stack.comm.transport import Subscriber
from robot_stack.data.dataset import open_episode

from conftest import published_between

pytestmark = pytest.mark.processes


def test_collect_three_episodes_on_the_emulated_ur5e(tmp_path, report):
    pytest.importorskip("rtde_control", reason="ur_rtde is installed by scripts/setup.sh (extra ur)")
    s = Session(
        config_path("ur5e_emulated.yaml"),
        sets={"nodes.recorder.params.root": str(tmp_path)},
        only=["sim", "arm", "cam_scene", "cam_wrist", "teleop", "controller", "recorder"],
    )
    witness = None
    try:
        s.start(("robot/state", "camera/wrist", "camera/scene"))
        witness = Subscriber(
            [s.cfg.pub_endpoint("arm", s.rd)], ("robot/state",), history=100_000, hwm=100_000, name="witness"
        )
        res = run_collect(None, tmp_path, 3, max_episode_s=20, session=s)
        seen = witness.history("robot/state")
        hb = s.heartbeat("arm")
    finally:
        if witness is not None:
            witness.close()
        s.close()
    assert len(res.saved) == 3 and res.discarded == 0, s.logs.tail(30)
    assert expert_successes(res.saved) == 3
    rows = []
    for p in res.saved:
        ep = open_episode(p)
        assert ep.meta["config_name"] == "ur5e_emulated"
        assert set(ep.streams()) == {"action", "camera/scene", "camera/wrist", "robot_state", "sim_objects", "teleop"}
        for stream in ep.streams():
            st = ep.array(stream, "stamp_ns")[:]
            assert len(st) > 5 and np.all(np.diff(st) > 0), f"{p.name}: {stream} stamps not increasing"
        rs = ep.array("robot_state", "stamp_ns")[:]
        at_least, at_most = published_between(seen, rs[0], rs[-1])
        assert at_least <= len(rs) <= at_most, (len(rs), at_least, at_most)  # every published state kept
        for cam in ("camera/wrist", "camera/scene"):
            fi = ep.array(cam, "frame_index")[:]
            assert np.array_equal(fi, np.arange(fi[0], fi[0] + len(fi))), f"{cam}: frames missing"
        rows.append(len(rs))
    report(
        f"collect on the emulated UR5e (ur_rtde): 3/3 episodes saved and successful, robot states per "
        f"episode {rows}, driver faults {hb.get('safety.driver_fault', 0):.0f}"
    )
    assert hb.get("safety.driver_fault", 0) == 0
