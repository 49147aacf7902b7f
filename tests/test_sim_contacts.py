"""The sim world's own count of robot contacts (``SimWorld.robot_contacts``), which the fault
campaign's collision rows require to stay 0: the cube on the table is not counted, the arm pressed
into the table is."""

from robot_stack.drivers.sim_model import SceneSpec
from robot_stack.drivers.sim_world import SimWorld


def test_robot_contacts_count_the_arm_on_the_table_not_the_cube_on_it():
    w = SimWorld(SceneSpec())
    w.step(200)  # the cube rests on the table, the arm at home
    assert w.robot_contacts == 0 and w.robot_contact_pairs == []
    q = w.arm.home_q.copy()
    q[1], q[3] = 1.6, -0.5  # the shoulder forward: the gripper down into the table
    w.set_target(q, 1.0)
    w.step(1500)
    assert w.robot_contacts > 100
    assert any("world" in pair for pair in w.robot_contact_pairs)
