"""The controller's mode machine: who drives, and which chunks are still current."""

import pytest

from robot_stack.control.modes import ModeMachine


def test_episode_events_switch_execution_and_make_chunks_in_flight_stale():
    m = ModeMachine("policy", autostart=False, has_policy=True)
    assert m.mode == "idle" and not m.policy_driving
    g0 = m.generation
    m.episode("start")
    assert m.mode == "policy" and m.policy_driving and m.episodes == 1
    g1 = m.generation
    assert g1 != g0 and m.is_current(g1) and not m.is_current(g0)
    m.episode("discard")
    assert m.mode == "idle" and not m.is_current(g1)
    with pytest.raises(ValueError, match="unknown episode event"):
        m.episode("pause")


def test_intervention_and_hand_back_drop_the_plan_each_time():
    m = ModeMachine("policy", autostart=True, has_policy=True)
    g = m.generation
    assert m.intervene() and m.mode == "teleop" and m.teleop_driving and not m.policy_driving
    assert not m.is_current(g) and m.interventions == 1
    assert not m.intervene()  # already teleop: nothing changes
    g = m.generation
    assert m.release() and m.mode == "policy" and m.generation != g
    assert not m.release()  # the policy already drives


def test_teleop_setups_without_a_policy_cannot_hand_back_and_two_arms_refuse_intervention():
    solo = ModeMachine("teleop", autostart=True, has_policy=False)
    assert not solo.release() and solo.mode == "teleop"
    two = ModeMachine("policy", autostart=True, has_policy=True, n_arms=2)
    assert not two.intervene() and two.mode == "policy" and two.refused_interventions == 1


def test_an_arm_in_estop_holds_every_arm_together_until_it_is_released():
    m = ModeMachine("policy", autostart=True, has_policy=True, n_arms=2)
    g = m.generation
    assert m.arms_in_estop(["arm_right"]) and m.mode == "held" and not m.policy_driving
    assert not m.is_current(g)
    assert not m.arms_in_estop(["arm_right"])  # no change
    assert m.arms_in_estop([]) and m.mode == "policy"
    apart = ModeMachine("policy", autostart=True, has_policy=True, n_arms=2, hold_together=False)
    assert not apart.arms_in_estop(["arm_right"]) and apart.mode == "policy"
