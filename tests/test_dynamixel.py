"""Leader arm over Dynamixel at protocol level: the official SDK against a fake bus on a pty."""

import numpy as np
import pytest

from robot_stack.testing.dynamixel_bus import FakeDynamixelBus as FakeBus, crc16, packet, stuff, unstuff
from robot_stack.drivers.dynamixel import DynamixelBus, DynamixelError, rad_to_ticks, ticks_to_rad
from conftest import wait_until

IDS = [1, 2, 3, 4, 5, 6, 7]
LT = 60.0  # reply timeout margin, ms: the fake answers from a Python thread on a loaded 2-core machine


@pytest.fixture
def bus():
    fake = FakeBus(IDS)
    yield fake
    fake.close()


def test_packet_bytes_match_the_emanual_example():
    assert packet(1, 0x01, b"") == bytes.fromhex("FFFFFD0001030001194E")  # PING id 1
    assert crc16(bytes.fromhex("FFFFFD0001030001")) == 0x4E19
    assert (
        stuff(b"\xff\xff\xfd\x01") == b"\xff\xff\xfd\xfd\x01"
        and unstuff(b"\xff\xff\xfd\xfd\x01") == b"\xff\xff\xfd\x01"
    )


def test_ping_sync_read_and_sync_write(bus):
    q = np.linspace(-1.0, 1.2, 7)
    for i, t in zip(IDS, rad_to_ticks(q)):
        bus.set_position(i, int(t))
    dxl = DynamixelBus(bus.port, IDS, baudrate=1_000_000, latency_timer_ms=LT)
    try:
        assert dxl.models == {i: FakeBus.MODEL for i in IDS}
        np.testing.assert_allclose(dxl.read_positions(), q, atol=2 * np.pi / 4096)
        insts = [inst for _, inst, _ in bus.received]
        assert insts.count(0x82) == 1  # one sync read for all seven joints
        dxl.write_goal_positions(q[::-1])
        wait_until(lambda: [bus.goal(i) for i in IDS] == list(rad_to_ticks(q[::-1])), 2, what="the goals on the bus")
        dxl.set_torque(False)
        assert all(bus.tables[i][64] == 0 for i in IDS)
    finally:
        dxl.close()


def test_negative_positions_and_byte_stuffing_on_the_wire(bus):
    # present position 0xFDFFFF.. patterns force stuffed bytes in the status packets
    bus.set_position(1, int.from_bytes(b"\xff\xff\xfd\x00", "little", signed=True))
    bus.set_position(2, -5000)
    dxl = DynamixelBus(bus.port, [1, 2], latency_timer_ms=LT)
    try:
        ticks = dxl.read_ticks()
        assert ticks[0] == int.from_bytes(b"\xff\xff\xfd\x00", "little", signed=True) and ticks[1] == -5000
        assert ticks_to_rad([2048])[0] == 0.0
    finally:
        dxl.close()


def test_missing_servo_is_named(bus):
    bus.missing.add(4)
    with pytest.raises(DynamixelError, match="servo 4 did not answer ping"):
        DynamixelBus(bus.port, IDS, latency_timer_ms=LT)


def test_missing_servo_during_sync_read(bus):
    dxl = DynamixelBus(bus.port, IDS, latency_timer_ms=LT)
    try:
        bus.missing.add(6)
        with pytest.raises(DynamixelError, match=r"servos \[6\] do not answer"):
            dxl.read_ticks()
    finally:
        dxl.close()


def test_bad_crc_and_timeout_are_clear_errors(bus):
    dxl = DynamixelBus(bus.port, IDS, latency_timer_ms=LT)
    try:
        bus.corrupt_crc = True
        with pytest.raises(DynamixelError, match="sync read of present position failed"):
            dxl.read_ticks()
        bus.corrupt_crc, bus.silent = False, True
        with pytest.raises(DynamixelError, match="failed"):
            dxl.read_ticks()
        with pytest.raises(DynamixelError, match="servo 3 did not answer ping"):
            dxl.ping(3)
        bus.silent, bus.hw_error = False, 0x80
        with pytest.raises(DynamixelError, match="servo 1 reports"):
            dxl.set_torque(True)
    finally:
        dxl.close()


def test_unopenable_port():
    with pytest.raises(DynamixelError, match="cannot open Dynamixel port"):
        DynamixelBus("/dev/does-not-exist", IDS)
