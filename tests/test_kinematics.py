"""FK/IK on the simulated Panda's robot model (panda_robotiq)."""

import numpy as np
import pytest

from robot_stack.control.kinematics import IKError
from robot_stack.control.robot_model import RobotModel

HOME_Q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])


@pytest.fixture(scope="module")
def kin():
    return RobotModel.load("panda_robotiq").kin


def test_fk_home_matches_known_tcp(kin):
    pose = kin.fk(HOME_Q)
    # the Panda's home TCP (pinch site of the 2F-85) lies in the x-z plane, gripper pointing down
    assert pose[1] == pytest.approx(0.0, abs=1e-6)
    assert 0.25 < pose[0] < 0.4 and 0.35 < pose[2] < 0.5
    R = __import__("scipy.spatial.transform", fromlist=["Rotation"]).Rotation.from_quat(pose[3:]).as_matrix()
    assert R[2, 2] == pytest.approx(-1.0, abs=1e-3)  # tool z axis points down


def test_ik_round_trip(kin):
    rng = np.random.default_rng(0)
    for _ in range(5):
        q_true = HOME_Q + rng.uniform(-0.3, 0.3, 7)
        target = kin.fk(q_true)
        q = kin.ik(target, HOME_Q, iters=200)
        got = kin.fk(q)
        assert np.linalg.norm(got[:3] - target[:3]) < 1e-4


def test_ik_unreachable_raises(kin):
    far = kin.fk(HOME_Q)
    far[:3] = [2.0, 0, 0.5]
    with pytest.raises(IKError, match="did not converge"):
        kin.ik(far, HOME_Q, iters=50)
