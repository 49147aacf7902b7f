"""Feetech STS bus (SO-100/SO-101) at protocol level: the official SDK against a fake bus on a pty,
packets byte-exact against the protocol manual."""

import time

import numpy as np
import pytest

from robot_stack.testing.feetech_bus import FakeFeetechBus, checksum, packet
from robot_stack.drivers.feetech import FeetechBus, FeetechError, decode_error, rad_to_ticks
from conftest import wait_until

IDS = [1, 2, 3, 4, 5, 6]  # SO-101: shoulder pan, shoulder lift, elbow flex, wrist flex, wrist roll, gripper
LT = 60.0  # reply timeout margin, ms: the fake answers from a Python thread on a loaded 2-core machine


@pytest.fixture
def fake():
    f = FakeFeetechBus(IDS)
    yield f
    f.close()


def test_packet_bytes_match_the_protocol_manual():
    # the manual's examples: PING id 1 -> FF FF 01 02 01 FB; its status FF FF 01 02 00 FC
    assert packet(1, 0x01) == bytes.fromhex("FFFF010201FB")
    assert packet(1, 0x00) == bytes.fromhex("FFFF010200FC")
    # READ id 1, address 0x38 (present position), 2 bytes
    assert packet(1, 0x02, bytes([0x38, 0x02])) == bytes.fromhex("FFFF0104023802BE")
    assert checksum(bytes.fromhex("0104023802")) == 0xBE
    assert decode_error(0x24) == "overheating, overload"


def test_sdk_speaks_the_protocol(fake):
    q = np.array([-1.0, -0.5, 0.0, 0.4, 1.0, 0.2])
    for i, t in zip(IDS, rad_to_ticks(q)):
        fake.set_position(i, int(t))
    bus = FeetechBus(fake.port, IDS, latency_timer_ms=LT)
    try:
        assert bus.models == {i: FakeFeetechBus.MODEL for i in IDS}
        fake.received.clear()
        np.testing.assert_allclose(bus.read_positions(), q, atol=2 * np.pi / 4096)
        # one SYNC_READ for all six: FF FF FE LEN=4+6 82 38 02 01..06 CHK
        body = bytes([0xFE, 10, 0x82, 0x38, 0x02, *IDS])
        assert fake.received == [b"\xff\xff" + body + bytes([checksum(body)])]
        fake.received.clear()
        bus.write_goal_positions(q[::-1])
        wait_until(lambda: [fake.goal(i) for i in IDS] == list(rad_to_ticks(q[::-1])), 2, what="the goals on the bus")
        t = rad_to_ticks(q[::-1])
        params = b"".join(bytes([i, int(v) & 0xFF, int(v) >> 8]) for i, v in zip(IDS, t))
        body = bytes([0xFE, len(params) + 4, 0x83, 0x2A, 0x02]) + params
        assert fake.received == [b"\xff\xff" + body + bytes([checksum(body)])]
        bus.set_torque(True)
        assert all(fake.torque(i) == 1 for i in IDS)
        fake.set_position(3, 0x8000 | 5)  # bit 15: negative ticks
        assert bus.read_ticks()[2] == -5
        with pytest.raises(FeetechError, match="leave the servos' single turn"):
            bus.write_goal_positions(np.full(6, 3.3))
    finally:
        bus.close()


def test_faults_are_named(fake):
    bus = FeetechBus(fake.port, IDS, latency_timer_ms=LT)
    try:
        fake.missing = {4}
        with pytest.raises(FeetechError, match=r"servos \[4\] do not answer"):
            bus.read_ticks()
        fake.missing = set()
        fake.corrupt = True
        with pytest.raises(FeetechError, match="sync read of present position failed"):
            bus.read_ticks()
        fake.corrupt = False
        fake.error_byte = 0x20
        with pytest.raises(FeetechError, match="servo 1 reports overload"):
            bus.set_torque(True)
        fake.error_byte = 0
        assert bus.read_ticks().shape == (6,)  # the bus recovers
    finally:
        bus.close()
    fake.missing = {2}
    with pytest.raises(FeetechError, match="servo 2 did not answer ping"):
        FeetechBus(fake.port, IDS, latency_timer_ms=LT)


def test_so101_leader_device_on_the_fake_bus(fake, tmp_path):
    """The ``so101_leader`` teleop device as a config builds it: calibration from the file, torque
    off on every servo, joints mapped (signs, offsets), gripper fraction, engage on the follower."""
    from robot_stack.comm.messages import RobotState
    from robot_stack.nodes.teleop import TeleopParams
    from robot_stack.teleop.base import TeleopInputs
    from robot_stack.teleop.leader import calibrate_joint_map, save_joint_map

    cal = tmp_path / "calibration.yaml"
    home = rad_to_ticks(np.zeros(6))
    for i, t in zip(IDS, home):
        fake.set_position(i, int(t))
        fake.tables[i][40] = 1  # torque on before: the device must switch it off
    # calibrate: the leader held in the follower's zero pose reads 0 rad raw; joint 2 mounted reversed
    save_joint_map(
        cal,
        "so101_leader",
        calibrate_joint_map(np.zeros(5), np.zeros(5), [1, -1, 1, 1, 1], gripper_open=0.8, gripper_closed=0.0),
    )
    p = TeleopParams.model_validate(
        {
            "device": {"type": "so101_leader", "port": fake.port, "calibration": str(cal), "latency_timer_ms": LT},
            "rate_hz": 30,
        }
    )
    assert p.references() == {"arm": "arm"}
    dev = p.device.build(None, p)
    try:
        assert all(fake.torque(i) == 0 for i in IDS)
        follower = {
            RobotState.TOPIC: RobotState(q=np.zeros(5), dq=np.zeros(5), ee_pose=np.r_[0.2, 0, 0.1, 0, 0, 0, 1.0])
        }
        cmd = dev.poll(TeleopInputs(follower.get, 0.0, 1 / 30))
        assert dev.leader.engaged and cmd.kind == "joint"
        raw = np.array([0.1, 0.2, -0.3, 0.0, 0.5, 0.4])
        for i, t in zip(IDS, rad_to_ticks(raw)):
            fake.set_position(i, int(t))
        cmd = dev.poll(TeleopInputs(follower.get, 2.0, 1 / 30))  # after the 1 s ramp
        np.testing.assert_allclose(cmd.value, raw[:5] * [1, -1, 1, 1, 1], atol=2 * np.pi / 4096)
        assert cmd.gripper == pytest.approx(0.5, abs=0.01)  # 0.4 rad of 0.8 open
    finally:
        dev.close()


def _calibrate_cli(fake, tmp_path, sweep):
    """``robot-stack calibrate servos`` as an operator runs it: Enter at the zero pose, the sweep
    (``sweep()`` moves the fake servos), Enter again."""
    import subprocess
    import sys

    from conftest import REPO

    cal = tmp_path / "calibration.yaml"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robot_stack.cli",
            "calibrate",
            "servos",
            "--bus",
            "feetech",
            "--port",
            fake.port,
            "--ids",
            "1",
            "2",
            "3",
            "4",
            "5",
            "--gripper-id",
            "6",
            "--signs",
            "1",
            "-1",
            "1",
            "1",
            "1",
            "--file",
            str(cal),
            "--section",
            "arms",
            "--name",
            "so101_follower",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    import os
    import select

    seen = ""

    def prompted(text):  # what the CLI printed so far holds ``text`` (or it ended)
        def check():
            nonlocal seen
            if select.select([p.stdout.fileno()], [], [], 0)[0]:
                chunk = os.read(p.stdout.fileno(), 4096).decode(errors="replace")
                seen += chunk
                if not chunk:
                    return True
            return text in seen

        return check

    wait_until(prompted("zero pose"), 20, what="the CLI asking for the zero pose")  # after it pinged the bus
    p.stdin.write("\n")
    p.stdin.flush()
    wait_until(prompted("whole range"), 20, what="the CLI asking for the sweep")
    sweep()
    p.stdin.write("\n")
    p.stdin.flush()
    out = p.communicate(timeout=20)[0]
    return p.returncode, seen + out, cal


def test_calibrate_servos_cli_records_offsets_and_ranges(fake, tmp_path):
    from robot_stack.calibration import store
    from robot_stack.teleop.leader import load_joint_map

    zero = np.array([0.1, -0.2, 0.05, 0.0, 0.3, -0.6])  # raw at the zero pose; the jaw closed at -0.6
    for i, t in zip(IDS, rad_to_ticks(zero)):
        fake.set_position(i, int(t))

    def sweep():
        for a in np.r_[np.linspace(0, 1, 15), np.linspace(1, -1, 30), np.linspace(-1, 0, 15)]:
            raw = zero + a * np.array([1.5, 1.4, 1.3, 1.2, 2.0, 0.0])
            raw[5] = zero[5] + max(a, 0) * 1.6  # the jaw opens one way only
            for i, t in zip(IDS, rad_to_ticks(raw)):
                fake.set_position(i, int(t))
            time.sleep(0.02)  # (pacing: a person sweeping the joints)

    rc, out, cal = _calibrate_cli(fake, tmp_path, sweep)
    assert rc == 0, out
    jm = load_joint_map(cal, "so101_follower", section="arms")
    np.testing.assert_allclose(jm.offsets, zero[:5], atol=2e-3)
    assert jm.signs == (1.0, -1.0, 1.0, 1.0, 1.0)
    assert jm.gripper_closed == pytest.approx(-0.6, abs=2e-3) and jm.gripper_open == pytest.approx(1.0, abs=0.05)
    ranges = np.array(store.load(cal)["arms"]["so101_follower"]["ranges"])
    np.testing.assert_allclose(ranges[:5, 0], zero[:5] - [1.5, 1.4, 1.3, 1.2, 2.0], atol=0.05)
    np.testing.assert_allclose(ranges[:5, 1], zero[:5] + [1.5, 1.4, 1.3, 1.2, 2.0], atol=0.05)


def test_calibrate_servos_refuses_a_joint_that_never_moved(fake, tmp_path):
    rc, out, cal = _calibrate_cli(fake, tmp_path, lambda: None)
    assert rc != 0 and not cal.exists()
    lines = [l for l in out.strip().splitlines() if l.strip()]
    assert "joint 1, joint 2, joint 3, joint 4, joint 5, gripper moved less than 0.20 rad" in lines[-1]
    assert "Traceback" not in out
