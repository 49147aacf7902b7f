"""Robotiq 2F-85 driver against a fake gripper on a pty (Modbus RTU, byte-exact): activation,
open and close to a width, object detection, a fault byte giving a named error."""

import pytest

from robot_stack.testing.robotiq import FakeRobotiq, crc16_modbus

pytest.importorskip("minimalmodbus", reason="minimalmodbus is installed by scripts/setup.sh (extra ur)")

from robot_stack.drivers.robotiq import Robotiq2F85, RobotiqError, width_from_position  # noqa: E402
from conftest import wait_until


@pytest.fixture
def gripper():
    fake = FakeRobotiq()
    g = Robotiq2F85(fake.port, timeout_s=0.5)
    yield g, fake
    g.close()
    fake.close()


def test_crc_matches_the_manuals_example():
    # 2F-85 manual, 4.7 "Modbus RTU example": read the status, "09 03 07 D0 00 01 85 CF"
    assert crc16_modbus(bytes.fromhex("090307D00001")).to_bytes(2, "little") == bytes.fromhex("85CF")


def test_activation_is_the_manuals_frames_and_completes(gripper):
    g, fake = gripper
    g.activate(timeout_s=2)
    # manual: clear rACT "09 10 03 E8 00 03 06 00 00 00 00 00 00 73 30", then set it
    # ("... 01 00 00 00 00 00 72 E1"); our speed/force bytes follow in bytes 4-5
    assert fake.requests[0][:13] == bytes.fromhex("091003E800030600000000") + bytes([255, 150])
    assert fake.requests[1][:8] == bytes.fromhex("091003E800030601")
    assert fake.requests[2] == bytes.fromhex("090307D00003") + crc16_modbus(bytes.fromhex("090307D00003")).to_bytes(
        2, "little"
    )
    st = g.status()
    assert st.activated and st.activation == 3 and st.fault_text is None


def test_close_to_a_width_and_open_again(gripper):
    g, fake = gripper
    g.activate(timeout_s=2)
    g.move_width(0.04)
    st = g.wait(timeout_s=2)
    assert st.object == 3 and not st.object_detected
    assert width_from_position(st.position) == pytest.approx(0.04, abs=0.085 / 255)
    # manual's close at full speed and force: "09 10 03 E8 00 03 06 09 00 00 FF FF FF 42 29"
    g.speed = g.force = 255
    g.move(255)
    assert fake.requests[-1] == bytes.fromhex("091003E8000306090000FFFFFF4229")
    g.wait(timeout_s=2)
    g.move_width(0.085)
    assert g.wait(timeout_s=2).position == 0


def test_object_detected_while_closing(gripper):
    g, fake = gripper
    g.activate(timeout_s=2)
    fake.object_at = 120
    g.move(255)
    st = g.wait(timeout_s=2)
    assert st.object_detected and st.object == 2 and st.position == 120


def test_fault_byte_is_a_named_error(gripper):
    g, fake = gripper
    g.activate(timeout_s=2)
    fake.fault = 0x0E
    g.move(200)
    with pytest.raises(RobotiqError, match="overcurrent"):
        g.wait(timeout_s=1)


def test_activation_fault_and_silence_are_errors():
    fake = FakeRobotiq()
    fake.fault = 0x0D
    g = Robotiq2F85(fake.port, timeout_s=0.2)
    try:
        with pytest.raises(RobotiqError, match="activation fault"):
            g.activate(timeout_s=1)
        fake.id = 3  # the gripper stops answering (another slave id): a timeout, named
        with pytest.raises(RobotiqError, match="did not answer"):
            g.status()
    finally:
        g.close()
        fake.close()


def test_the_ur_driver_serves_the_gripper_on_its_thread():
    """The UR driver's gripper thread: activation at start, the commanded opening sent once per
    change, the measured width read back; a gripper fault becomes a driver fault."""
    import threading

    from robot_stack.drivers.arm import ArmDriverError
    from robot_stack.drivers.ur import UrDriver

    fake = FakeRobotiq()
    drv = UrDriver("127.0.0.1", gripper_port=fake.port)
    try:
        drv._start_gripper()
        drv._grip_cmd = 0.5  # what command() stores: half open
        wait_until(lambda: abs(drv._grip_width - 0.0425) <= 0.001, 3, poll_s=0.02, what="half open")
        assert drv._grip_width == pytest.approx(0.0425, abs=0.001)
        moves = [r[10] for r in fake.requests if r[1] == 16 and r[7] == 0x09]
        assert moves == [0, 128]  # open at start, then one request per change (the thread polls at 50 Hz)
        fake.fault = 0x0E
        wait_until(lambda: drv._grip_error is not None, 2, poll_s=0.02, what="the gripper's fault")
        drv.rx = None
        with pytest.raises(ArmDriverError, match="overcurrent"):
            drv._fault = None
            drv.fault = lambda: None  # the arm itself is fine; the gripper is not
            drv.read()
    finally:
        drv._grip_stop.set()
        wait_until(
            lambda: not any(t.name == "robotiq" for t in threading.enumerate()), 2, what="the gripper thread ended"
        )
        fake.close()
