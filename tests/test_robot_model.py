"""Robot models as data: each shipped robot from its own description file, and the rule that no
module outside the sim reads the sim scene."""

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.control.robot_model import RobotModel, RobotModelError, available_robots, load_description

REPO = Path(__file__).resolve().parents[1]

# name -> (joints, gripper kind, stroke m, TCP z axis at home pointing down?)
SHIPPED = {
    "panda_robotiq": (7, "robotiq_2f85", 0.085, True),
    "fr3_hand": (7, "franka_hand", 0.08, True),
    "panda_hand": (7, "franka_hand", 0.08, True),
    "ur5e_robotiq": (6, "robotiq_2f85", 0.085, True),
    "vx300s": (6, "viperx", 0.072, False),
}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def model(request):
    return RobotModel.load(request.param)


def test_the_four_models_ship():
    assert set(SHIPPED) <= set(available_robots())


def test_model_data_from_its_description(model):
    n, kind, stroke, down = SHIPPED[model.name]
    assert model.n_joints == n and len(model.lower) == n and len(model.max_vel) == n
    assert model.gripper_kind == kind and model.gripper_stroke_m == pytest.approx(stroke)
    assert np.all(model.lower < model.home_q) and np.all(model.home_q < model.upper)
    z_tool = Rotation.from_quat(model.home_pose[3:]).as_matrix()[:, 2]
    if down:  # the tool points at the table at home
        assert z_tool[2] < -0.99, z_tool


def test_fk_jacobian_and_ik_agree(model):
    rng = np.random.default_rng(1)
    q0 = model.home_q
    J = model.jacobian(q0)
    assert J.shape == (6, model.n_joints)
    eps = 1e-6
    for i in range(model.n_joints):  # Jacobian columns against finite differences of FK
        dq = np.zeros(model.n_joints)
        dq[i] = eps
        d = (model.fk(q0 + dq)[:3] - model.fk(q0 - dq)[:3]) / (2 * eps)
        assert np.allclose(J[:3, i], d, atol=1e-6)
    for _ in range(3):
        q_true = np.clip(q0 + rng.uniform(-0.25, 0.25, model.n_joints), model.lower, model.upper)
        target = model.fk(q_true)
        q = model.ik(target, q0, iters=300)
        assert np.linalg.norm(model.fk(q)[:3] - target[:3]) < 1e-4


def test_fr3_and_panda_share_franka_kinematics():
    """FR3 (our MJCF from the FR3 URDF) and the Menagerie Panda have the same DH chain: the flange
    frames agree at any posture, so the two TCPs differ only by the tool offsets."""
    fr3, panda = RobotModel.load("fr3_hand"), RobotModel.load("panda_robotiq")
    rng = np.random.default_rng(2)
    for _ in range(3):
        q = fr3.home_q + rng.uniform(-0.3, 0.3, 7)

        # flange = TCP moved back along the tool z axis by each tool's length
        def flange(m, length, q=q):
            p = m.fk(q)
            return p[:3] - length * Rotation.from_quat(p[3:]).as_matrix()[:, 2]

        fr3_tool = 0.1034
        d = np.linalg.norm(flange(fr3, fr3_tool) - flange(panda, _panda_tool_length(panda)))
        assert d < 2e-3, d


def _panda_tool_length(panda):
    """Distance along the tool axis from the Panda's flange (link7 + 0.107 m) to the pinch site."""
    import mujoco

    d = mujoco.MjData(panda.model)
    d.qpos[panda.qpos_adr] = panda.home_q
    mujoco.mj_kinematics(panda.model, d)
    b = panda.model.body("link7").id
    flange = d.xpos[b] + d.xmat[b].reshape(3, 3)[:, 2] * 0.107
    return float(np.linalg.norm(panda.fk(panda.home_q)[:3] - flange))


def test_bad_descriptions_are_named(tmp_path):
    with pytest.raises(RobotModelError, match="unknown robot 'nope'"):
        RobotModel.load("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nsource: repo:missing.xml\njoints: [a]\ntcp_site: t\nhome_q: [0, 0]\n"
        "max_joint_vel: [1]\nmax_joint_acc: [1]\ngripper: {kind: none, stroke_m: 0}\n"
    )
    with pytest.raises(RobotModelError, match="home_q has 2 values for 1 joints"):
        load_description(bad)
    bad.write_text(bad.read_text().replace("home_q: [0, 0]", "home_q: [0]"))
    with pytest.raises(RobotModelError, match="missing.xml does not exist"):
        RobotModel.load(bad)
    bad.write_text(bad.read_text().replace("repo:missing.xml", "package:no_such_pkg/x.xml"))
    with pytest.raises(RobotModelError, match="pip install --no-deps no-such-pkg"):
        RobotModel.load(bad)


def test_no_module_outside_the_sim_imports_the_sim_scene():
    """Kinematics, limits and gripper come from the robot model; only the sim itself (its world,
    its drivers, its node) may import the sim scene module."""
    allowed = {
        "drivers/sim_model.py",
        "drivers/sim_world.py",
        "drivers/sim.py",
        "robot_stack/nodes/sim_world.py",
        "drivers/ur_emulator.py",
    }  # the emulated UR controller is a sim too
    offenders = []
    for folder in ("robot_stack", "drivers", "calibration", "policies", "teleop"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                if any(n.endswith("sim_model") or ".sim_model." in n for n in names):
                    offenders.append(rel)
    assert not offenders, f"modules outside the sim import the sim scene: {sorted(set(offenders))}"
