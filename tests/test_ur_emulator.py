"""The UR controller emulator's logic without sockets (tests/test_hil_ur.py drives it through
ur_rtde): the RTDE wire format, the control script's register protocol, and the failures a real
controller has (speed limit -> protective stop, watchdog, a dropped client, the unlock delay)."""

import struct

import numpy as np
import pytest
from robot_stack.testing.setups import node, write_setup

from robot_stack.drivers import rtde_wire as w
from robot_stack.drivers.ur_emulator import (
    CMD_SERVOJ,
    CMD_SET_WATCHDOG,
    CMD_STOP_SCRIPT,
    DONE,
    READY,
    SAFETY_NORMAL,
    SAFETY_PROTECTIVE_STOP,
    UrController,
    UrEmulator,
    _RtdeSession,
    script_commands,
)

pytestmark = pytest.mark.processes  # the UR emulator's TCP servers


SCRIPT = """def rtde_control():
    global reg_offset_float = 0
    global reg_offset_int = 0
    def process_cmd(cmd):
        if cmd == 1:
            textmsg("movej")
        elif cmd == 11:
            # servoJ
            servo_target = q
        elif cmd == 255:
            textmsg("Received stop script!")
        end
    end
end
"""


@pytest.fixture(scope="module")
def ctl_factory():
    def make(**kw):
        c = UrController(**kw)
        c.load_script(SCRIPT)
        return c

    return make


def _servoj(c: UrController, q, t=0.002, lookahead=0.1):
    names = ["input_int_register_0"] + [f"input_double_register_{i}" for i in range(11)]
    c.write_inputs(names, [CMD_SERVOJ, *q, 0.0, 0.0, t, lookahead, 300.0])


def test_wire_roundtrip_and_errors():
    types = ["DOUBLE", "VECTOR6D", "INT32", "UINT32", "BOOL"]
    fmt = w.recipe_format(types)
    vals = [1.5, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], -7, 9, True]
    flat = w.flatten(vals)
    assert w.unflatten(types, fmt.unpack(fmt.pack(*flat))) == vals  # exact: doubles round-trip
    msg = w.frame(w.DATA_PACKAGE, b"\x01" + fmt.pack(*flat))
    assert struct.unpack(">HB", msg[:3]) == (len(msg), ord("U"))
    with pytest.raises(w.RTDEProtocolError, match="unknown RTDE type"):
        w.recipe_format(["DOUBLE", "FLOAT128"])


def test_recipe_setup_answers_types_and_not_found():
    """An output recipe with a typo is refused with NOT_FOUND in its place (as the controller
    does); a good one is answered with the types, and its package packs them."""
    sent = []

    class Sock:
        def sendall(self, b):
            sent.append(b)

    refused = []
    sess = _RtdeSession(UrController(), Sock(), refused)
    sess.handle(w.SETUP_OUTPUTS, struct.pack(">d", 500.0) + b"actual_q,actual_qq")
    assert sent[-1][3] == 0 and sent[-1][4:] == b"VECTOR6D,NOT_FOUND" and refused == ["actual_qq"]
    sess.handle(w.SETUP_OUTPUTS, struct.pack(">d", 125.0) + b"timestamp,actual_q,robot_status_bits")
    assert sent[-1][3] == 1 and sent[-1][4:] == b"DOUBLE,VECTOR6D,UINT32" and sess.out_every == 4
    sess.handle(w.START, b"")
    pkg = sess.package()
    assert len(pkg) == 3 + 1 + 8 + 48 + 4
    sess.handle(w.SETUP_INPUTS, b"input_int_register_0,input_double_register_3")
    assert sent[-1][3] == 1 and sent[-1][4:] == b"INT32,DOUBLE"
    # a data package of the wrong size is answered with a text message, not applied
    sess.handle(w.DATA_PACKAGE, b"\x01\x00\x00")
    assert sent[-1][2] == w.TEXT_MESSAGE


def test_register_protocol_ready_done_and_realtime_servoj(ctl_factory):
    c = ctl_factory()
    assert c.running and c.reg.out_int[0] == READY
    q = c.world.joint_state()[0]
    _servoj(c, q + 0.001)  # real-time: processed and answered ready, never done
    assert c.reg.out_int[0] == READY and np.allclose(c.servo_target, q + 0.001)
    c.write_inputs(["input_int_register_0", "input_double_register_0"], [CMD_SET_WATCHDOG, 10.0])
    assert c.reg.out_int[0] == DONE and c.watchdog_hz == 10.0  # a regular command: done ...
    c.write_inputs(["input_int_register_0"], [0])
    assert c.reg.out_int[0] == READY  # ... then ready after the client's no-command
    c.write_inputs(["input_int_register_0"], [CMD_STOP_SCRIPT])
    assert not c.running


def test_servoj_over_the_speed_limit_is_a_protective_stop_and_unlock_waits(ctl_factory, fake_clock):
    c = ctl_factory(unlock_delay_s=0.3)
    q = c.world.joint_state()[0]
    _servoj(c, q + np.r_[0.02, 0, 0, 0, 0, 0])  # 0.02 rad in 2 ms: 10 rad/s, over 3.14
    assert c.safety_mode == SAFETY_PROTECTIVE_STOP and not c.running and c.counters["protective_stops"] == 1
    held = c.q_target.copy()
    for _ in range(20):
        c.tick()
    assert np.abs(c.q_target - held).max() < 0.01  # holds where it was
    assert c.unlock_protective_stop().startswith("Cannot unlock protective stop until")
    fake_clock.advance(0.35)
    assert c.unlock_protective_stop() == "Protective stop releasing" and c.safety_mode == SAFETY_NORMAL
    c.load_script(SCRIPT)
    assert c.running
    _servoj(c, c.q_target + np.r_[0.004, 0, 0, 0, 0, 0])  # 2 rad/s: within the limit
    assert c.safety_mode == SAFETY_NORMAL


def test_watchdog_stops_a_program_whose_client_went_silent(ctl_factory, fake_clock):
    c = ctl_factory()
    c.write_inputs(["input_int_register_0", "input_double_register_0"], [CMD_SET_WATCHDOG, 20.0])  # 50 ms
    c.write_inputs(["input_int_register_0"], [0])
    for _ in range(10):  # fed every tick: keeps running
        c.write_inputs(["input_int_register_0"], [0])
        c.tick()
        fake_clock.advance(0.002)
    assert c.running
    fake_clock.advance(0.06)
    c.tick()
    assert not c.running and c.counters["watchdog_stops"] == 1


def test_a_dropped_command_client_stops_the_program_and_others_do_not(ctl_factory):
    c = ctl_factory()
    c.on_client_lost(writes_command_register=False)  # e.g. an RTDEReceiveInterface
    assert c.running
    c.on_client_lost(writes_command_register=True)
    assert not c.running and c.counters["disconnect_stops"] == 1


def test_dashboard_replies():
    emu = UrEmulator(controller=UrController())  # not started: replies only
    assert emu.dashboard("robotmode") == "Robotmode: RUNNING"
    assert emu.dashboard("safetymode") == "Safetymode: NORMAL"
    assert emu.dashboard("running") == "Program running: false"
    assert emu.dashboard("PolyscopeVersion").startswith("URSoftware 5.")
    assert emu.dashboard("is in remote control") == "true"
    assert emu.dashboard("power off") == "Powering off" and emu.dashboard("robotmode") == "Robotmode: POWER_OFF"
    assert emu.dashboard("bogus") == "could not understand: 'bogus'"


def test_script_commands_are_read_from_the_script():
    assert script_commands(SCRIPT) == {1: "movej", 11: "servoJ", 255: "Received stop script!"}


def test_the_emulator_listens_on_loopback_only(tmp_path):
    """RTDE and the dashboard carry no authentication: a non-loopback address is refused, at
    ``robot-stack check`` for the sim world's ur_emulator_host too."""
    from robot_stack.runtime.config import ConfigError, load_config

    with pytest.raises(ValueError, match="loopback addresses only"):
        UrEmulator("0.0.0.0", controller=UrController()).start()
    p = tmp_path / "c.yaml"
    write_setup(p, {"nodes": {"sim": node("sim_world", robot="ur5e_robotiq", ur_emulator_host="192.168.1.5")}})
    with pytest.raises(ConfigError, match="loopback addresses only"):
        load_config(p)


def test_actual_tcp_force_is_the_sim_wrench_zero_in_free_space_and_up_when_pressing():
    """``actual_TCP_force`` (what ur_rtde's ``getActualTCPForce`` reads) is the sim's wrist wrench
    in the base frame: zero with the tool free, about +z (the table pushing back) with the closed
    gripper pressed 1 cm into the cube's top."""
    from robot_stack.control.robot_model import RobotModel

    c = UrController()
    world, model = c.world, RobotModel.load("ur5e_robotiq")
    world.step(200)
    np.testing.assert_array_equal(c.output("actual_TCP_force"), np.zeros(6))
    q = world.data.qpos[world.arm.qpos].copy()
    tcp, cube = world.tcp_pose(), world.cube_pose()
    for z in (0.10, 0.025):  # the closed fingertips touch the cube's top about 37 mm above its centre
        q = model.ik(np.r_[cube[:2], cube[2] + z, tcp[3:]], q)
        world.set_target(q, 0.0)
        world.step(600)
    f = np.array(c.output("actual_TCP_force"))
    np.testing.assert_array_equal(f, world.tcp_wrench())
    assert f[2] > 5.0 and np.abs(f[:2]).max() < 0.1 * f[2], f
