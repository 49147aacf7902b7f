"""Deploy's failure naming (pure): each cause from the evidence that shows it, in priority order."""

import pytest

from robot_stack.apps.failures import (
    CAUSES,
    MIN_EVENTS,
    EpisodeEvidence,
    classify,
    counter_delta,
    failure_counts,
)


def ev(**kw) -> EpisodeEvidence:
    base = dict(episode=3, success=False, final_error=60.0, near_goal=False, error_name="TCP-cube")
    return EpisodeEvidence(**(base | kw))


CTL_OK = {"requests": 40.0, "chunks": 40.0}


@pytest.mark.parametrize(
    "evidence, cause, words",
    [
        (ev(controller={"requests": 30.0, "errors": 30.0}), "no_chunks", "30 requests, no chunk (30 errors)"),
        (ev(controller=CTL_OK, arms={"arm": {"safety.heartbeat_stale": 1.0}}), "arm_fault", "heartbeat_stale x1"),
        (
            ev(controller=CTL_OK, arms={"arm": {"safety.workspace": 12.0, "safety.jump": 2.0}}),
            "arm_refused",
            "14 schedules refused: workspace x12, jump x2",
        ),
        (
            ev(controller=CTL_OK | {"refused_repeats": 6.0}, arms={"arm": {"safety.jump": 1.0}}),
            "arm_refused",
            "1 schedules refused: jump x1; 6 equal chunks held back",
        ),
        (ev(controller=CTL_OK, arms={"arm": {"safety.collision_stop": 1.0}}), "collision_stop", "collision_stop x1"),
        (
            ev(controller=CTL_OK | {"bad_chunks": 5.0}),
            "controller_refused",
            "5 of 45 chunks (bad 5, refused by the strategy 0, over budget 0)",
        ),
        (ev(controller=CTL_OK | {"obs_holds": 9.0, "skew_holds": 9.0}), "skew_hold", "9 observation windows"),
        (ev(controller=CTL_OK | {"obs_holds": 9.0}), "obs_hold", "9 holds on a stale stream"),
        (
            ev(controller=CTL_OK, object_rise_max_m=0.09, object_rise_end_m=0.0, gripper_end_m=0.0),
            "dropped_object",
            "lifted 90 mm, ended 0 mm up",
        ),
        (
            ev(controller=CTL_OK, object_rise_max_m=0.001, object_rise_end_m=0.0, gripper_end_m=0.002),
            "grasp_missed",
            "gripper closed to 2 mm",
        ),
        (ev(controller=CTL_OK, final_error=30.0, near_goal=True), "timeout_near", "ended 30.0 mm from the goal"),
        (ev(controller=CTL_OK), "timeout_far", "ended 60.0 mm from the goal (TCP-cube)"),
    ],
)
def test_each_cause_is_named_from_its_evidence(evidence, cause, words):
    f = classify(evidence)
    assert f.cause == cause and f.episode == 3 and cause in CAUSES
    assert words in f.detail


def test_a_success_names_nothing():
    assert classify(ev(success=True, arms={"arm": {"safety.workspace": 50.0}})) is None


def test_the_earlier_cause_explains_the_later_ones():
    """An arm refusing every chunk also leaves the TCP far from the goal: the refusal is named, and
    the other signals stay in the notes."""
    f = classify(ev(controller=CTL_OK | {"obs_holds": 1.0}, arms={"arm": {"safety.workspace": 20.0}}))
    assert f.cause == "arm_refused"
    assert "obs_holds 1" in f.notes and "arm workspace x20" in f.notes


def test_a_few_events_name_no_cause_but_are_noted():
    f = classify(ev(controller=CTL_OK | {"obs_holds": MIN_EVENTS - 1.0}, arms={"arm": {"safety.jump": 1.0}}))
    assert f.cause == "timeout_far" and f"obs_holds {MIN_EVENTS - 1}" in f.notes and "arm jump x1" in f.notes


def test_clamps_and_slowdowns_are_not_refusals():
    arms = {"arm": {"safety.workspace_clamped": 40.0, "safety.collision_slowdown": 9.0, "safety.servo_limited": 7.0}}
    assert classify(ev(controller=CTL_OK, arms=arms)).cause == "timeout_far"


def test_two_arms_are_named_in_the_detail():
    f = classify(ev(controller=CTL_OK, arms={"left": {"safety.workspace": 4.0}, "right": {"safety.jump": 3.0}}))
    assert f.cause == "arm_refused" and "left: workspace x4" in f.detail and "right: jump x3" in f.detail


def test_counter_deltas_and_counts():
    assert counter_delta({"a": 2.0, "b": 5.0}, {"a": 7.0, "b": 5.0, "c": 1.0}) == {"a": 5.0, "c": 1.0}
    fs = [classify(ev(episode=i, controller=CTL_OK, near_goal=i % 2 == 0)) for i in range(5)]
    assert list(failure_counts(fs).items()) == [("timeout_near", 3), ("timeout_far", 2)]  # in CAUSES order
