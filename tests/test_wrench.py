"""The sim's wrist force/torque measurement (``SimWorld.tcp_wrench``) and the RobotState field that
carries it."""

import mujoco
import numpy as np
import pytest

from robot_stack.comm.codec import EncodeError, decode, encode
from robot_stack.comm.messages import RobotState


def _press(world, model, depth: float):
    """Closed gripper over the cube, the TCP target ``depth`` (m) deeper than 35 mm above the cube
    centre (the closed fingertips touch its top at about 37 mm); settles 1.2 s."""
    q = world.data.qpos[world.arm.qpos].copy()
    tcp, cube = world.tcp_pose(), world.cube_pose()
    for z in (0.10, 0.035 - depth):
        q = model.ik(np.r_[cube[:2], cube[2] + z, tcp[3:]], q)
        world.set_target(q, 0.0)
        world.step(600)


def test_wrench_is_zero_in_free_space_and_pushes_up_when_pressing():
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(seed=5)
    model = RobotModel.load("panda_robotiq")
    world.step(200)
    np.testing.assert_array_equal(world.tcp_wrench(), np.zeros(6))
    forces = []
    for depth in (0.0, 0.005, 0.01):
        world.reset()
        _press(world, model, depth)
        w = world.tcp_wrench()
        forces.append(w[2])
        assert abs(w[0]) < 0.1 * w[2] + 0.05 and abs(w[1]) < 0.1 * w[2] + 0.05  # straight down onto a flat top
        # independent check: the contact forces' generalized force on the arm joints (MuJoCo's
        # qfrc_constraint) equals J(q)^T w at the TCP
        jp, jr = np.zeros((3, world.model.nv)), np.zeros((3, world.model.nv))
        mujoco.mj_jacSite(world.model, world.data, jp, jr, world.arm.tcp_site)
        tau = jp[:, world.arm.dof].T @ w[:3] + jr[:, world.arm.dof].T @ w[3:]
        np.testing.assert_allclose(tau, world.data.qfrc_constraint[world.arm.dof], atol=0.02 * np.abs(tau).max() + 1e-3)
    # pressing deeper pushes harder (the arm's impedance in series with the contacts)
    assert forces[1] > forces[0] + 1.0 and forces[2] > forces[1] + 1.0, forces


def test_robot_state_wrench_is_optional_and_finite():
    base = dict(stamp_ns=1, q=np.zeros(7), dq=np.zeros(7), ee_pose=np.r_[0, 0, 0, 0, 0, 0, 1.0], gripper_width=0.08)
    assert decode(encode(RobotState.TOPIC, RobotState(**base)))[1].wrench is None
    w = np.arange(6, dtype=float)
    np.testing.assert_array_equal(decode(encode(RobotState.TOPIC, RobotState(**base, wrench=w)))[1].wrench, w)
    with pytest.raises(EncodeError, match="wrench has non-finite"):
        encode(RobotState.TOPIC, RobotState(**base, wrench=np.r_[w[:5], np.nan]))


def test_only_six_finite_values_are_published_as_a_wrench():
    """What the arm node publishes from a driver's wrench: 6 finite values, or None (a glitch
    with NaN or the wrong length is "no wrench", never passed on)."""
    from robot_stack.drivers.arm import usable_wrench

    np.testing.assert_array_equal(usable_wrench([1, 2, 3, 0.1, 0.2, 0.3]), [1, 2, 3, 0.1, 0.2, 0.3])
    assert usable_wrench([1, 2, 3, 0.1, 0.2, 0.3]).dtype == np.float64
    assert usable_wrench(None) is None
    assert usable_wrench([1, 2, np.nan, 0, 0, 0]) is None
    assert usable_wrench([1, 2, np.inf, 0, 0, 0]) is None
    assert usable_wrench([1, 2, 3]) is None
