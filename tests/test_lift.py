"""The bimanual lift task: its success check, its scripted expert driving two arms in MuJoCo
physics (two Pandas with Robotiq 2F-85s at a shared table, without processes), and one teleop
device switched between two arms."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from robot_stack.tasks import LiftTask
from robot_stack.teleop.scripted import LiftExpert

BASES = {"arm_left": (0.0, 0.4, 0.0, 0.0), "arm_right": (0.0, -0.4, 0.0, 0.0)}


def _T(base):
    from robot_stack.drivers.sim_model import ArmPlacement

    return ArmPlacement("a", base=base).T_world_base()


def test_lifted_needs_height_and_a_level_bar():
    t = LiftTask()
    start = np.array([0.5, 0.0, 0.02])
    level = np.r_[0.5, 0.0, 0.02 + t.lift_height + 0.001, Rotation.from_euler("z", 0.1).as_quat()]
    assert t.lifted(level, start)
    assert not t.lifted(np.r_[level[:2], 0.02 + t.lift_height - 0.002, level[3:]], start)  # 2 mm short
    tilted = np.r_[level[:3], Rotation.from_euler("x", t.max_tilt + 0.02).as_quat()]  # one end higher
    assert not t.lifted(tilted, start)
    assert t.lifted(np.r_[level[:3], Rotation.from_euler("x", t.max_tilt - 0.02).as_quat()], start)


def test_lift_expert_grasps_each_end_in_its_arms_base_frame():
    """Kinematic: the TCPs follow the carrots; each arm's commands are in its own base frame and
    name it; each closes at the bar end nearest its base with the fingers across the bar."""
    ex = LiftExpert({a: _T(b) for a, b in BASES.items()}, jitter=0.0)
    yaw = 0.15
    bar = np.r_[0.52, 0.02, 0.02, Rotation.from_euler("z", yaw).as_quat()]
    tcp = {a: np.r_[0.31, 0.0, 0.44, 1.0, 0, 0, 0] for a in BASES}  # home TCP, base frame
    closed_at, stop = {}, None
    for k in range(600):
        cmds = ex.step(tcp, bar, 1 / 30)
        assert [c.arm for c in cmds] == list(BASES) and all(c.kind == "ee_absolute" for c in cmds)
        for c in cmds:
            if c.gripper < 0.5 and c.arm not in closed_at:
                closed_at[c.arm] = c.value.copy()
        tcp = {c.arm: c.value.copy() for c in cmds}
        if any("episode_stop" in c.buttons for c in cmds):
            stop = k
            break
    assert stop is not None and ex.PHASES[ex.phase] == "hold"
    axis = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    for a, b in BASES.items():
        grasp_world = closed_at[a][:3] + np.r_[b[:2], 0.0]
        end = bar[:3] + np.sign(b[1]) * LiftTask().grasp_offset * axis
        np.testing.assert_allclose(grasp_world, end, atol=1e-6)
        # the fingers close along the TCP y axis: across the bar (perpendicular to its axis)
        closing = Rotation.from_quat(closed_at[a][3:]).apply([0.0, 1.0, 0.0])
        assert abs(np.dot(closing, axis)) < 1e-6
    # and then both lift by the carry height, the same stamps
    assert all(tcp[a][2] == pytest.approx(closed_at[a][2] + LiftTask().carry_height, abs=1e-9) for a in BASES)


def test_lift_expert_in_physics_lifts_the_bar_level():
    """MuJoCo physics: both grasps hold the bar through the lift, which ends level and at the
    carry height, for random bar poses; one arm's grasp alone (the other never closes) tilts it."""
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_model import ArmPlacement, SceneSpec
    from robot_stack.drivers.sim_world import SimWorld

    task = LiftTask()
    scene = SceneSpec(
        arms=tuple(ArmPlacement(a.removeprefix("arm_"), base=b) for a, b in BASES.items()),
        cube_half=task.bar_half,
        cube_mass=task.bar_mass,
    )
    world = SimWorld(scene, seed=5)
    model = RobotModel.load("panda_robotiq")
    names = {a: a.removeprefix("arm_") for a in BASES}
    ex = LiftExpert({a: _T(b) for a, b in BASES.items()}, task, seed=2)

    def episode(broken: str | None = None, seconds: float = 14.0):
        bar0 = world.reset(cube_range=task.cube_range, max_yaw=task.max_yaw)
        ex.on_episode("start")
        q = {a: world.data.qpos[world.arms[n].qpos].copy() for a, n in names.items()}
        base_xyz = {a: np.r_[b[:3]] for a, b in BASES.items()}
        prev = None
        per = int(round((1 / 30) / world.dt))
        for _ in range(int(seconds * 30)):
            tcp = {}
            for a, n in names.items():
                p = world.tcp_pose(n)
                tcp[a] = np.r_[p[:3] - base_xyz[a], p[3:]]  # yaw-0 bases: world -> base is a shift
            cmds = {c.arm: c for c in ex.step(tcp, world.cube_pose(), 1 / 30)}
            prev = prev or {a: cmds[a].value for a in cmds}
            for i in range(per):
                s = (i + 1) / per
                if i % 5 == 4:
                    for a, c in cmds.items():
                        rot = Slerp([0, 1], Rotation.from_quat([prev[a][3:], c.value[3:]]))([s])[0].as_quat()
                        q[a] = model.ik(np.r_[prev[a][:3] + s * (c.value[:3] - prev[a][:3]), rot], q[a])
                for a, c in cmds.items():
                    world.set_target(q[a], 1.0 if a == broken else c.gripper, names[a])
                world.step(1)
            prev = {a: cmds[a].value for a in cmds}
            if any("episode_stop" in c.buttons for c in cmds.values()):
                return bar0, True
        return bar0, False

    for _ in range(3):
        bar0, stopped = episode()
        assert stopped, f"the expert did not finish: phase {ex.PHASES[ex.phase]}"
        bar = world.cube_pose()
        assert task.lifted(bar, bar0[:3]), (bar, bar0)
        assert bar[2] - bar0[2] == pytest.approx(task.carry_height, abs=0.015)
    bar0, _ = episode(broken="arm_right")
    assert not task.lifted(world.cube_pose(), bar0[:3])


def test_one_device_is_switched_between_two_arms():
    """A person's one device drives one arm at a time: its commands are stamped with that arm,
    switch_arm passes it to the other (cyclic), and commands that name their arm pass unchanged."""
    from robot_stack.comm.messages import TeleopCommand
    from robot_stack.teleop.base import ArmSelector

    sel = ArmSelector(["arm_left", "arm_right"])
    cmd = lambda **kw: TeleopCommand(kind="ee_delta", value=np.zeros(6), **kw)  # noqa: E731
    assert sel.route(cmd()).arm == "arm_left"
    assert sel.route(cmd(buttons=["switch_arm"])).arm == "arm_right"  # the switching command moves the new arm
    assert sel.route(cmd()).arm == "arm_right"
    assert sel.route(cmd(arm="arm_left")).arm == "arm_left" and sel.current == "arm_right"
    assert sel.route(cmd(buttons=["switch_arm"])).arm == "arm_left"
    one = ArmSelector([])
    assert one.route(cmd(buttons=["switch_arm"])).arm == ""  # one arm: the controller's first
