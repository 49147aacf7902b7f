"""The policy node's fault injection for the collision rows of the fault campaign (bench/faults.py):
chunks that every check but the collision checks lets through."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.nodes.policy import FOLD_POSE, inject_fault

HOME = np.array([0.307, 0.0, 0.441, 1.0, 0.0, 0.0, 0.0])  # the Panda's home TCP pose, gripper down
BOX_MIN, BOX_MAX = np.array([0.15, -0.6, 0.005]), np.array([0.85, 0.6, 0.8])  # panda_robotiq's box


def _run(fault: str, n_chunks: int = 40, executed: int = 3) -> np.ndarray:
    """Chunks from the campaign's goto policy (each starts at the measured TCP and holds the
    orientation first observed), corrupted by ``fault``, each executed ``executed`` actions
    (receding horizon): the executed TCP poses."""
    p, out = HOME[:3].copy(), []
    for _ in range(n_chunks):
        a = np.zeros((16, 8), np.float32)
        a[:, :3], a[:, 3:7], a[:, 7] = p, HOME[3:], 1.0
        a = inject_fault(a, fault)
        out.extend(a[1 : executed + 1, :7])
        p = np.asarray(a[executed, :3], float)
    return np.array(out, float)


@pytest.mark.parametrize("fault", ["table", "fold"])
def test_collision_faults_keep_the_tcp_in_the_box_and_under_the_speed_limits(fault):
    poses = _run(fault)
    assert np.all(poses[:, :3] >= BOX_MIN) and np.all(poses[:, :3] <= BOX_MAX)
    step_m = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1)
    quats = poses[:, 3:]
    turn = np.array(
        [(Rotation.from_quat(b) * Rotation.from_quat(a).inv()).magnitude() for a, b in zip(quats, quats[1:])]
    )
    assert step_m.max() / 0.1 <= 0.5 + 1e-6  # max_ee_vel 0.5 m/s at the policy's 0.1 s
    assert turn.max() / 0.1 <= 1.5 + 1e-6  # max_ee_ang_vel 1.5 rad/s
    if fault == "table":  # down to 3 cm, the gripper pitched forward (horizontal)
        assert poses[-1, 2] == pytest.approx(0.03, abs=1e-6)
        approach = Rotation.from_quat(poses[-1, 3:]).apply([0.0, 0.0, 1.0])
        assert approach[0] > 0.99  # the approach axis points forward (+x): the hand lies on the table
    else:  # at the folding pose
        assert np.allclose(poses[-1, :3], FOLD_POSE[:3], atol=1e-6)
        assert (Rotation.from_quat(poses[-1, 3:]) * Rotation.from_quat(FOLD_POSE[3:]).inv()).magnitude() < 1e-3
