"""The press task (contact, for slow-fast control): its success check and its force-controlled
expert against springs of unknown stiffness, kinematic and in MuJoCo physics."""

from types import SimpleNamespace

import numpy as np
import pytest

from robot_stack.tasks import PressTask
from robot_stack.teleop.scripted import PressExpert

CUBE = np.array([0.5, -0.05, 0.02])


def test_press_success_needs_the_force_over_the_cube():
    t = PressTask()
    obj = SimpleNamespace(cube_pose=np.r_[CUBE, 0, 0, 0, 1.0])
    st = lambda xy, fz: SimpleNamespace(
        ee_pose=np.r_[xy, 0.057, 0, 0, 0, 1.0], gripper_width=0.0, wrench=np.r_[0, 0, fz, 0, 0, 0]
    )
    assert t.achieved(st(CUBE[:2], 8.0), obj, CUBE) and t.achieved(st(CUBE[:2], 9.9), obj, CUBE)
    assert not t.achieved(st(CUBE[:2], 10.1), obj, CUBE)  # 26 % over
    assert not t.achieved(st(CUBE[:2] + [0.03, 0], 8.0), obj, CUBE)  # beside the cube
    assert not t.achieved(
        SimpleNamespace(ee_pose=np.r_[CUBE[:2], 0.057, 0, 0, 0, 1.0], gripper_width=0.0, wrench=None), obj, CUBE
    )  # no wrench measured: never a success
    assert t.error_mm(st(CUBE[:2], 5.0), obj) == pytest.approx(3.0) and t.error_unit == "N"


def _kinematic_press(ex: PressExpert, stiffness: float) -> np.ndarray:
    """The TCP follows the carrot 100 ms late; the push is ``stiffness`` x depth below the touch
    height. Returns the force per 30 Hz period until the expert presses stop (fails without one)."""
    touch = CUBE[2] + 0.037
    tcp = np.r_[0.42, -0.02, 0.3, 1, 0, 0, 0]
    lag, forces = [tcp[:3].copy()] * 3, []
    for _ in range(30 * 25):
        fz = stiffness * max(0.0, touch - tcp[2])
        cmd = ex.step(tcp, CUBE, fz, 1 / 30)
        assert cmd.gripper == 0.0
        lag.append(cmd.value[:3].copy())
        tcp = np.r_[lag[-4], cmd.value[3:]]
        forces.append(fz)
        if "episode_stop" in cmd.buttons:
            return np.array(forces)
    pytest.fail(f"no stop: phase {ex.PHASES[ex.phase]}, last force {forces[-1]:.1f} N")


@pytest.mark.parametrize("stiffness", [400.0, 1500.0])
def test_press_expert_regulates_the_force_on_an_unknown_spring(stiffness):
    """Kinematic: the expert finds contact, holds the force inside the tolerance for the task's
    hold time, retreats and presses stop."""
    task = PressTask()
    f = _kinematic_press(PressExpert(task, jitter=0.0), stiffness)
    pressing = np.flatnonzero(f > task.contact_n)
    held = f[pressing[-1] - int(30 * task.hold_s) - 12 : pressing[-1] - 12]  # before it lifts off
    assert np.all(np.abs(held - task.force_n) <= task.force_tol * task.force_n), held.round(2)
    assert f.max() < 2 * task.force_n  # no slam


def test_press_expert_in_physics_holds_the_force_whatever_the_softness():
    """MuJoCo physics: the cube's contact softness at both ends of the press task's range; the
    expert's carrot through IK at 30 Hz, 100 ms late; the measured push holds 8 N +- 25 %."""
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(seed=3)
    model = RobotModel.load("panda_robotiq")
    task = PressTask()
    per = int(round((1 / 30) / world.dt))
    for tc in world.SOFTNESS:
        world.reset()
        world.randomize_cube_softness(tc)
        ex = PressExpert(task, seed=1)
        q = world.data.qpos[world.arm.qpos].copy()
        queue, log = [], []
        for _ in range(30 * 20):
            st = SimpleNamespace(ee_pose=world.tcp_pose(), wrench=world.tcp_wrench())
            queue.append(ex.step(st.ee_pose, world.cube_pose()[:3], task.force_z(st), 1 / 30))
            cmd = queue.pop(0) if len(queue) > 3 else queue[0]
            q = model.ik(cmd.value, q)
            world.set_target(q, cmd.gripper)
            world.step(per)
            log.append((ex.phase, world.tcp_wrench()[2]))
            if "episode_stop" in cmd.buttons:
                break
        phases = np.array([p for p, _ in log])
        f = np.array([f for _, f in log])
        assert phases[-1] == 3, f"softness {tc}: no retreat (phase {ex.PHASES[phases[-1]]})"
        last = f[np.flatnonzero(phases == 2)[-int(30 * task.hold_s) :]]
        assert np.all(np.abs(last - task.force_n) <= task.force_tol * task.force_n), (tc, last.round(1))


def test_perturbed_press_shows_force_excursions_and_still_holds():
    """With jumps of up to 4 mm the force leaves its band (what the fast layer learns a reaction
    from), the admittance brings it back, and the expert still holds and finishes."""
    task = PressTask()
    ex = PressExpert(task, jitter=0.0, perturb_m=0.004, seed=3)
    f = _kinematic_press(ex, 1000.0)
    assert ex.perturbs == ex.max_perturbs
    assert np.abs(f[f > task.contact_n] - task.force_n).max() > 0.3 * task.force_n  # excursions
