"""robot_stack.testing as a lab uses it: an example project outside this repository loads the
pytest plugin and runs its fixtures against our nodes; the fault builders are refused as documented."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robot_stack.comm.messages import Heartbeat, WaypointSchedule
from robot_stack.testing import faults

EXAMPLE_CONFTEST = 'pytest_plugins = ["robot_stack.testing.plugin"]\n'
EXAMPLE_TEST = textwrap.dedent('''
    """A lab's own test of its setup: the arm node holds when its controller goes silent."""
    import numpy as np

    from robot_stack.control.paths import straight_line
    from robot_stack.runtime.arm_client import ArmClient

    SETUP = {"name": "lab", "nodes": {"arm": {"kind": "arm", "params": {
        "driver": {"type": "ideal"}, "rate_hz": 250, "safety": {"heartbeat_timeout_s": 0.2}}}}}


    def test_my_arm_holds_when_my_controller_is_silent(node_builder, fake_bus, fake_clock):
        arm = node_builder(SETUP, "arm")
        ctl = ArmClient(None, None, arm="arm", source="my_controller", heartbeat_hz=0,
                        tx=fake_bus.sender("arm", "my_controller"))
        start = arm.kin.fk(arm.driver.q)
        goal = start.copy()
        goal[0] += 0.1
        ctl.send_schedule(*straight_line(start, goal, fake_clock.now_ns(), speed=0.05), space="ee")
        for _ in range(250):  # 1 s at 250 Hz, never a heartbeat after the schedule
            arm.step()
            fake_clock.advance(1 / 250)
        assert arm.metrics()["safety.heartbeat_stale"] == 1
        assert arm.mode == "hold"
''')


@pytest.mark.processes
def test_a_project_outside_the_repository_runs_the_plugins_fixtures(tmp_path):
    (tmp_path / "conftest.py").write_text(EXAMPLE_CONFTEST)
    (tmp_path / "test_lab.py").write_text(EXAMPLE_TEST)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_malformed_frames_are_refused_and_counted_by_a_node_input(fake_bus):
    rx = fake_bus.receiver("arm")
    hb = Heartbeat(node="x")
    stamps = np.array([1, 2], np.int64) * 10**9
    sched = WaypointSchedule(stamps_ns=stamps, positions=np.tile([0.5, 0, 0.3, 1.0, 0, 0, 0], (2, 1)), space="ee")
    for frames in (
        faults.undecodable(),
        faults.truncated_buffer(WaypointSchedule.TOPIC, sched),
        faults.extra_frame(WaypointSchedule.TOPIC, sched),
        faults.wrong_schema_version("heartbeat", hb),
    ):
        fake_bus.inject("arm", frames)
    fake_bus.inject("arm", faults.wire("heartbeat", hb))
    got = rx.recv()
    assert got is not None and got[0] == "heartbeat" and rx.recv() is None  # only the good one came through
    assert rx.stats.decode_errors == 4


def test_a_nan_schedule_decodes_and_keeps_its_nan_for_the_arm_to_refuse():
    sched = faults.nan_schedule(np.array([1, 2]) * 10**9, np.tile([0.5, 0, 0.3, 1.0, 0, 0, 0], (2, 1)), at=1)
    from robot_stack.comm.codec import decode

    _, msg = decode(faults.wire(WaypointSchedule.TOPIC, sched))
    assert np.isnan(msg.positions[1, 0]) and np.isfinite(msg.positions[0]).all()
