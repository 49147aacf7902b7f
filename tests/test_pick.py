"""The pick-and-place task: its success check, its scripted expert (kinematic and in MuJoCo physics
with the Robotiq 2F-85's contacts), and the task a config names."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from robot_stack.tasks import PickTask, ReachTask, task_for_config
from robot_stack.teleop.scripted import PickExpert

TARGET = np.array([0.45, 0.25])


def test_placed_needs_the_cube_in_the_square_on_the_table_and_released():
    t = PickTask()
    c = np.r_[TARGET, 0.02]
    assert t.placed(c, TARGET, 0.05, 0.085)
    assert t.placed(c + [0.049, -0.049, 0], TARGET, 0.05, 0.085)
    assert not t.placed(c + [0.051, 0, 0], TARGET, 0.05, 0.085)  # 1 mm outside the square
    assert not t.placed(c + [0, 0, 0.08], TARGET, 0.05, 0.085)  # still held above it
    assert not t.placed(c, TARGET, 0.05, 0.041)  # fingers still on the cube
    st = SimpleNamespace(ee_pose=np.r_[0.45, 0.25, 0.15, 0, 0, 0, 1.0], gripper_width=0.085)
    obj = SimpleNamespace(cube_pose=np.r_[c + [0.03, 0.04, 0], 0, 0, 0, 1.0], target_xy=TARGET, target_half=0.05)
    assert t.achieved(st, obj, np.zeros(3)) and t.error_mm(st, obj) == pytest.approx(50.0)
    # the reach task judges the TCP against the cube, not the target
    assert not ReachTask().achieved(st, obj, obj.cube_pose[:3])


def _run_expert(ex: PickExpert, cube: np.ndarray, lag: int = 3, carry: bool = True, max_steps: int = 2000):
    """TCP follows the carrot ``lag`` periods late; with ``carry`` the cube rides with a gripper that
    closed within ``tol`` of it and drops to the table when it opens. Returns (per-period TCP,
    gripper cmd, phase), stop index."""
    tcp = np.r_[0.42, -0.02, 0.48, 1, 0, 0, 0]
    carrots, log = [tcp[:3].copy()] * lag, []
    cube, held = np.array(cube, float), None
    for k in range(max_steps):
        if carry and log and log[-1][1] < 0.5:
            if held is None and np.linalg.norm(tcp[:3] - cube) < ex.tol:
                held = cube - tcp[:3]
            if held is not None:
                cube = tcp[:3] + held
        elif held is not None:
            cube, held = np.r_[cube[:2], 0.02], None
        cmd = ex.step(tcp, cube, TARGET, 1 / 30)
        assert cmd.kind == "ee_absolute"
        assert np.linalg.norm(cmd.value[:3] - carrots[-1]) <= 0.15 / 30 + 1e-9  # carrot speed limit
        carrots.append(cmd.value[:3].copy())
        tcp = np.r_[carrots[-1 - lag], cmd.value[3:]]
        log.append((tcp[:3].copy(), cmd.gripper, ex.phase))
        if "episode_stop" in cmd.buttons:
            return log, k
    return log, None


def test_pick_expert_closes_at_the_cube_and_opens_over_the_target():
    """Kinematic: the TCP lags the carrot by 100 ms; the gripper closes only once the TCP is at the
    grasp point, opens only at the place height over the target, and stop comes at the end."""
    task = PickTask()
    ex = PickExpert(task, jitter=0.0)
    cube = np.array([0.55, -0.12, 0.02])
    log, stop = _run_expert(ex, cube)
    assert stop is not None
    grip = np.array([g for _, g, _ in log])
    tcp = np.array([p for p, _, _ in log])
    k_close = int(np.argmax(grip < 0.5))
    k_open = k_close + int(np.argmax(grip[k_close:] > 0.5))
    assert 0 < k_close < k_open < stop
    np.testing.assert_allclose(tcp[k_close], cube + [0, 0, task.grasp_height], atol=ex.tol)
    np.testing.assert_allclose(tcp[k_open, :2], TARGET, atol=ex.tol)
    assert tcp[k_open, 2] == pytest.approx(task.place_height, abs=ex.tol)
    # closed for close_s before it lifts: the TCP stays at the grasp point meanwhile
    still = tcp[k_close : k_close + int(ex.close_s * 30) - 1]
    assert np.ptp(still, axis=0).max() < 1e-9
    assert tcp[stop, 2] == pytest.approx(task.carry_height, abs=ex.tol)
    # the cube goals stop following the cube once it is grasped (it moves with the gripper)
    assert ex.grasp_xyz is not None and np.allclose(ex.grasp_xyz, cube)


def test_pick_expert_waits_for_a_lagging_tcp_before_closing():
    ex = PickExpert(PickTask(), jitter=0.0, wait_s=1.0)
    cube = np.array([0.5, 0.0, 0.02])
    log, _ = _run_expert(ex, cube, lag=12)  # 0.4 s behind: the carrot arrives first
    grip = np.array([g for _, g, _ in log])
    tcp = np.array([p for p, _, _ in log])
    k_close = int(np.argmax(grip < 0.5))
    assert np.linalg.norm(tcp[k_close] - cube) < ex.tol


def _sim_episode(world, model, ex: PickExpert, seconds: float = 16.0):
    """The expert's carrot through IK into the sim's joint impedance control at 30 Hz (the teleop
    rate), the physics at its own step; returns (max cube height while closed, stop pressed)."""
    world.reset()
    ex.on_episode("start")
    q = world.data.qpos[world.arm.qpos].copy()
    per = int(round((1 / 30) / world.dt))
    prev = world.tcp_pose()
    lifted, stopped = 0.0, False
    for _ in range(int(seconds * 30)):
        tcp = world.tcp_pose()
        cmd = ex.step(tcp, world.cube_pose()[:3], world.target_xy(), 1 / 30)
        goal = cmd.value
        for i in range(per):  # linear + slerp between the 30 Hz targets, IK every 5 physics steps
            a = (i + 1) / per
            if i % 5 == 4:
                rot = Slerp([0, 1], Rotation.from_quat([prev[3:], goal[3:]]))([a])[0].as_quat()
                q = model.ik(np.r_[prev[:3] + a * (goal[:3] - prev[:3]), rot], q)
            world.set_target(q, cmd.gripper)
            world.step(1)
        prev = goal
        if cmd.gripper < 0.5:
            lifted = max(lifted, float(world.cube_pose()[2]))
        if "episode_stop" in cmd.buttons:
            stopped = True
            break
    return lifted, stopped


def test_pick_expert_in_physics_grasps_carries_and_places():
    """MuJoCo physics, no processes: the Robotiq 2F-85's grasp holds the cube through the carry
    (lifted to the carry height), and the cube ends in the target square, released, for random
    cube positions and yaws (the expert never turns the gripper)."""
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(seed=7)
    model = RobotModel.load("panda_robotiq")
    task = PickTask()
    ex = PickExpert(task, seed=1)
    for _ in range(3):
        lifted, stopped = _sim_episode(world, model, ex)
        c = world.cube_pose()
        width = world.joint_state()[3]
        assert stopped, f"the expert did not finish: phase {ex.PHASES[ex.phase]}"
        assert lifted > task.carry_height - 0.03, f"the grasp slipped: cube lifted to {lifted:.3f} m only"
        assert task.placed(c[:3], world.target_xy(), world.scene.target_half, width), (c, width)


def test_the_config_names_its_task():
    from robot_stack.runtime.config import load_config
    from robot_stack.apps.demo import config_path

    assert isinstance(task_for_config(load_config(config_path("sim_panda_pick.yaml"))), PickTask)
    t = task_for_config(load_config(config_path("sim_panda_reach.yaml")))
    assert type(t) is ReachTask


def test_an_overridden_copy_of_the_config_keeps_its_calibration(tmp_path):
    """Sessions run a copy of the config in a temp folder: its relative calibration file must still
    be the original's (the controller's and the recorder's T_base_camera)."""
    from robot_stack.apps.demo import config_path
    from robot_stack.apps.session import write_overridden
    from robot_stack.runtime.config import load_config

    src = config_path("sim_panda_pick.yaml")
    out = write_overridden(src, {"nodes.controller.params.cameras": ["cam_scene"]}, tmp_path)
    cfg = load_config(out)
    assert cfg.calibration.file == load_config(src).calibration.file and cfg.calibration.file.is_file()
    assert cfg.nodes["controller"].typed.cameras == ["cam_scene"]


def test_pick_expert_recovers_from_a_missed_grasp():
    """Kinematic: a first grasp aimed beside the cube (miss_rate 1) closes on air 45 mm off along
    the TCP x axis; the cube stays on the table through the lift, so the expert opens, goes back to
    the approach and closes on the cube the second time."""
    task = PickTask()
    ex = PickExpert(task, jitter=0.0, miss_rate=1.0)
    cube = np.array([0.55, -0.12, 0.02])
    log, stop = _run_expert(ex, cube, carry=False)  # a cube that is never lifted
    grip = np.array([g for _, g, _ in log])
    tcp = np.array([p for p, _, _ in log])
    closes = np.flatnonzero((grip[1:] < 0.5) & (grip[:-1] > 0.5)) + 1
    assert len(closes) == ex.max_attempts and ex.attempt == ex.max_attempts - 1  # then it gives up
    first, second = tcp[closes[0]], tcp[closes[1]]
    assert np.linalg.norm(first[:2] - cube[:2]) == pytest.approx(ex.miss_offset, abs=ex.tol)
    assert abs(first[1] - cube[1]) < ex.tol  # along the TCP x axis (base x for this orientation)
    np.testing.assert_allclose(second, cube + [0, 0, task.grasp_height], atol=ex.tol)
    # between the attempts the gripper opened and the TCP went back up to the approach height
    between = slice(closes[0], closes[1])
    assert grip[between].max() == 1.0 and tcp[between, 2].max() > cube[2] + task.approach_height - ex.tol


def test_pick_expert_retries_in_physics_and_places():
    """MuJoCo physics: the deliberately missed first grasp leaves the cube where it was, the second
    grasp lifts it and the cube ends in the target square."""
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(seed=11)
    model = RobotModel.load("panda_robotiq")
    task = PickTask()
    ex = PickExpert(task, seed=2, miss_rate=1.0)
    lifted, stopped = _sim_episode(world, model, ex, seconds=24.0)
    c = world.cube_pose()
    assert stopped and ex.attempt == 1, (stopped, ex.attempt, ex.PHASES[ex.phase])
    assert lifted > task.carry_height - 0.03
    assert task.placed(c[:3], world.target_xy(), world.scene.target_half, world.joint_state()[3])
