"""Teleop devices and the scripted expert: pure mappings, a pty keyboard, joystick event bytes."""

import os
import pty

import numpy as np
import pytest

from robot_stack.tasks import ReachTask
from robot_stack.teleop.base import TeleopError, apply_commands, axes_to_delta, deadzone
from robot_stack.teleop.gamepad import EVENT, JS_AXIS, JS_BUTTON, JS_INIT, GamepadState, gamepad_command
from robot_stack.teleop.keyboard import KeyboardDevice, keys_to_command
from robot_stack.teleop.scripted import ReachExpert
from robot_stack.teleop.spacemouse import spacemouse_command


def test_deadzone_zeroes_idle_noise_and_is_continuous():
    assert np.array_equal(deadzone([0.05, -0.09, 0.0], 0.1), [0, 0, 0])
    np.testing.assert_allclose(deadzone([0.1, 0.55, -1.0, 2.0], 0.1), [0.0, 0.5, -1.0, 1.0])
    with pytest.raises(ValueError):
        deadzone([0.0], 1.0)


def test_axes_to_delta_units():
    np.testing.assert_allclose(axes_to_delta([1, 0, -0.5, 0, 0, 1], 0.02, 0.1, 0.5), [0.002, 0, -0.001, 0, 0, 0.01])


def test_spacemouse_idle_device_never_moves_and_buttons_toggle():
    cmd, g, rec = spacemouse_command(np.full(6, 0.08), [0, 0], [0, 0], 1.0, False, 0.02)
    assert not np.any(cmd.value) and cmd.buttons == []
    cmd, g, rec = spacemouse_command(np.zeros(6), [1, 1], [0, 0], g, rec, 0.02)
    assert g == 0.0 and rec and cmd.buttons == ["episode_start"]
    cmd, g, rec = spacemouse_command(np.zeros(6), [1, 1], [1, 1], g, rec, 0.02)  # held: no new edge
    assert g == 0.0 and rec and cmd.buttons == []


def test_keyboard_mapping():
    cmd, g = keys_to_command("wwa", 1.0)
    np.testing.assert_allclose(cmd.value, [0.01, 0.005, 0, 0, 0, 0])
    cmd, g = keys_to_command("gnQ?", g)
    assert g == 0.0 and cmd.buttons == ["episode_stop", "quit"]
    assert keys_to_command("", 1.0) == (None, 1.0)


def test_keyboard_reads_a_terminal():
    master, slave = pty.openpty()
    try:
        dev = KeyboardDevice(os.ttyname(slave))
        assert dev.poll() is None
        os.write(master, b"rrd i")
        from conftest import wait_until

        cmd = wait_until(dev.poll, 2, what="the keys read")
        np.testing.assert_allclose(cmd.value[:3], [0, -0.005, 0.01])
        assert cmd.buttons == ["estop", "intervene"]
        dev.close()
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(TeleopError, match="cannot open terminal"):
        KeyboardDevice("/nonexistent/tty")


def test_gamepad_events():
    st = GamepadState()
    data = (
        EVENT.pack(0, 0, JS_BUTTON | JS_INIT, 0)  # init state, not a press
        + EVENT.pack(1, -32767, JS_AXIS, 1)  # left stick up: +x
        + EVENT.pack(2, 1, JS_BUTTON, 1)
    )  # B pressed
    st.feed(data)
    cmd, g, rec, inter = gamepad_command(st, 1.0, False, False, 0.1)
    assert cmd.value[0] == pytest.approx(0.01) and cmd.buttons == ["episode_start"] and rec and g == 1.0
    cmd, *_ = gamepad_command(st, g, rec, inter, 0.1)
    assert cmd.buttons == []  # edges are consumed
    with pytest.raises(TeleopError, match="multiple of 8"):
        st.feed(b"\x00" * 5)


def test_apply_commands_absolute_and_delta():
    target = np.r_[0.4, 0.0, 0.3, 0, 0, 0, 1, 1.0]
    from robot_stack.comm.messages import TeleopCommand

    out = apply_commands(
        target, [TeleopCommand(kind="ee_delta", value=np.r_[0.01, 0, 0, 0, 0, np.pi / 2], gripper=0.0)]
    )
    np.testing.assert_allclose(out[:3], [0.41, 0, 0.3])
    np.testing.assert_allclose(np.abs(out[3:7]), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-9)
    assert out[7] == 0.0
    out = apply_commands(out, [TeleopCommand(kind="ee_absolute", value=np.r_[0.5, 0.1, 0.2, 1, 0, 0, 0])])
    np.testing.assert_allclose(out, [0.5, 0.1, 0.2, 1, 0, 0, 0, 1.0])


def test_expert_reaches_the_pregrasp_pose_and_presses_stop():
    """Kinematic check: a TCP that follows the carrot exactly ends in the task's success region."""
    task = ReachTask()
    ex = ReachExpert(task, speed=0.15, jitter=0.0)
    tcp = np.r_[0.31, 0.0, 0.44, 1, 0, 0, 0]
    cube = np.array([0.52, -0.1, 0.02])
    stopped_at = None
    for k in range(400):
        cmd = ex.step(tcp, cube, 1 / 30)
        assert cmd.kind == "ee_absolute"
        step = np.linalg.norm(cmd.value[:3] - tcp[:3])
        assert step <= 0.15 / 30 + 1e-9  # carrot speed limit
        tcp = cmd.value
        if "episode_stop" in cmd.buttons:
            stopped_at = k
            break
    assert stopped_at is not None and task.success(tcp[:3], cube, cube)
    assert tcp[2] - cube[2] == pytest.approx(task.grasp_height)


def test_leader_arm_refuses_far_engage_then_ramps_in():
    from robot_stack.teleop.leader import JointMap, LeaderArm

    jm = JointMap(offsets=(0.1, -0.2, 0.0), signs=(1, -1, 1), gripper_open=2.0, gripper_closed=1.0)
    np.testing.assert_allclose(jm.joints([0.6, 0.3, -0.4]), [0.5, -0.5, -0.4])
    assert jm.gripper(1.5) == 0.5 and jm.gripper(3.0) == 1.0
    with pytest.raises(TeleopError, match="reports 2 joints"):
        jm.joints([0.0, 0.0])
    leader = LeaderArm(max_engage_error=0.2, ramp_s=1.0)
    follower = np.zeros(3)
    with pytest.raises(TeleopError, match="joint 2 leader -0.500"):
        leader.engage([0.1, -0.5, 0.0], follower, t=0.0)
    assert not leader.engaged
    with pytest.raises(TeleopError, match="not engaged"):
        leader.command(follower, 1.0, 0.0)
    leader.engage([0.1, -0.15, 0.05], follower, t=10.0)
    q_lead = np.array([0.1, -0.15, 0.05])
    np.testing.assert_allclose(leader.command(q_lead, 1.0, 10.0).value, 0.0)  # no jump at engage
    np.testing.assert_allclose(leader.command(q_lead, 1.0, 10.5).value, q_lead / 2)
    cmd = leader.command(q_lead, 0.3, 12.0)
    assert cmd.kind == "joint" and cmd.gripper == 0.3
    np.testing.assert_allclose(cmd.value, q_lead)


class _FlakyBus:
    """A leader's bus stand-in: raw positions, or a bus error when ``fail`` is set."""

    def __init__(self, raw):
        self.raw, self.fail = np.asarray(raw, float), False

    def read_positions(self):
        from robot_stack.drivers.dynamixel import DynamixelError

        if self.fail:
            raise DynamixelError("no status packet")
        return self.raw


def test_leader_device_engages_on_the_follower_state_and_disengages_on_a_failing_bus():
    from robot_stack.comm.messages import RobotState
    from robot_stack.teleop.base import TeleopInputs
    from robot_stack.teleop.leader import JointMap, LeaderDevice

    bus = _FlakyBus([0.1, 0.0, 0.0, 2.0])  # 3 joints + gripper (open)
    dev = LeaderDevice(bus, JointMap((0.0, 0.0, 0.0), (1, 1, 1), 2.0, 1.0), 3, True, 0.2, 1.0, rate_hz=30)
    follower = RobotState(q=np.zeros(3), dq=np.zeros(3), ee_pose=np.r_[0.5, 0, 0.4, 0, 0, 0, 1.0])
    latest = {RobotState.TOPIC: None}
    step = lambda t: dev.poll(TeleopInputs(latest.get, t, 1 / 30))  # noqa: E731
    assert step(0.0) is None and not dev.leader.engaged  # no follower state yet: no engage
    latest[RobotState.TOPIC] = follower
    cmd = step(1.0)
    assert dev.leader.engaged and cmd.kind == "joint" and cmd.gripper == 1.0
    np.testing.assert_allclose(cmd.value, 0.0)  # ramp starts at the follower's pose
    bus.fail = True
    for k in range(14):  # under 0.5 s of failed reads (15 at 30 Hz): skipped periods, still engaged
        assert step(1.1 + k / 30) is None
    assert dev.leader.engaged
    step(1.6)
    assert not dev.leader.engaged and dev.metrics()["bus_errors"] == 15
    bus.fail = False
    bus.raw = np.array([0.6, 0.0, 0.0, 2.0])  # 0.5 rad from the follower: refused until matched
    assert step(2.0) is None and dev.metrics()["engage_refusals"] == 1


def test_scripted_expert_acts_only_inside_an_episode_and_devices_name_their_inputs():
    from robot_stack.comm.messages import RobotState
    from robot_stack.drivers.sim_messages import ObjectState
    from robot_stack.nodes.teleop import TeleopParams
    from robot_stack.teleop.base import TeleopInputs

    p = TeleopParams.model_validate({"device": {"type": "scripted", "world": "world"}, "arm": "left"})
    assert p.references() == {"left": "arm", "world": "sim_world"}
    assert TeleopParams.model_validate({"device": {"type": "leader", "calibration": "c.yaml"}}).references() == {
        "arm": "arm"
    }
    assert TeleopParams.model_validate({"device": "keyboard"}).references() == {}
    ex = ReachExpert(ReachTask(), jitter=0.0)
    latest = {
        RobotState.TOPIC: RobotState(q=np.zeros(7), dq=np.zeros(7), ee_pose=np.r_[0.4, 0, 0.3, 0, 0, 0, 1.0]),
        ObjectState.TOPIC: ObjectState(cube_pose=np.r_[0.5, 0, 0.02, 0, 0, 0, 1.0], target_xy=np.zeros(2)),
    }
    inputs = TeleopInputs(latest.get, 0.0, 1 / 30)
    assert ex.poll(inputs) is None  # before the episode starts
    ex.on_episode("start")
    cmd = ex.poll(inputs)
    assert cmd.kind == "ee_absolute" and np.linalg.norm(cmd.value[:3] - [0.4, 0, 0.3]) == pytest.approx(0.15 / 30)
    ex.on_episode("stop")
    assert ex.poll(inputs) is None
