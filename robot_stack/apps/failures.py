"""Why a deployed episode failed: one named cause per failed episode (pure: no sockets, no nodes).

``robot-stack deploy`` (and the demo) gathers, per episode, what the stack itself counted while the
episode ran, as differences of the nodes' heartbeat counters across it: the controller's
(``chunks``, ``requests``, ``errors``, ``bad_chunks``, ``refused_chunks``, ``over_budget``,
``obs_holds``, ``skew_holds``) and each arm node's safety counters (``safety.<check>``); and
from the sim's ground truth, the task's final error and, for tasks that grasp, how high the object
rose and whether the gripper ended closed. :func:`classify` names the first cause that the
evidence shows, in this order (the earlier ones explain the later ones):

======================  ==========================================================================
cause                   evidence
======================  ==========================================================================
``no_chunks``           requests were sent and no action chunk came back (errors, outage)
``arm_fault``           the arm was in e-stop, lost its sender's heartbeat, or its driver faulted
``arm_refused``         the arm refused schedules (the checks named), or one and the policy repeated it
``collision_stop``      the arm's collision guard stopped it
``controller_refused``  the controller refused chunks (non-finite, wrong shape, strategy refusal)
``obs_hold``            the controller held on stale observations (``skew_hold``: cameras out of sync)
``dropped_object``      the object rose over ``LIFTED_M`` and ended below it again
``grasp_missed``        the gripper ended closed and the object never rose
``timeout_near``        none of the above, ended near the goal (the task's ``near_goal``)
``timeout_far``         none of the above, ended farther
======================  ==========================================================================

A counter of fewer than ``MIN_EVENTS`` events names no cause (a single hold at a stream's first
frame is not why an episode failed); it is still listed in the episode's notes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: an object this much over where it lay (m) was lifted
LIFTED_M = 0.02
#: a gripper opening below this (m) is closed on nothing (the sim cube is 40 mm wide)
CLOSED_EMPTY_M = 0.01
#: events of one kind that name a cause
MIN_EVENTS = 3

#: arm safety counters that are faults of the arm or its link, not refusals of a schedule
ARM_FAULTS = ("estop", "heartbeat_stale", "driver_fault", "refused_driver_fault", "refused_estop")
#: arm safety counters that neither refuse nor stop (a clamp, a slow-down, a servo-rate limit)
NOT_REFUSALS = ("collision_slowdown", "servo_limited", "collision_stale_peer", "collision_bad_peer_state")

CAUSES = {
    "no_chunks": "no action chunk from the policy",
    "arm_fault": "arm in fault (e-stop, heartbeat lost or driver)",
    "arm_refused": "chunks refused by the arm",
    "collision_stop": "stopped by the collision guard",
    "controller_refused": "chunks refused by the controller",
    "obs_hold": "held on stale observations",
    "skew_hold": "held: cameras out of sync",
    "dropped_object": "object lifted, then dropped",
    "grasp_missed": "grasp closed on nothing",
    "timeout_near": "timed out near the goal",
    "timeout_far": "timed out far from the goal",
}


@dataclass
class EpisodeEvidence:
    """What the stack counted during one deployed episode.

    Attributes:
        episode: its index (0-based).
        success: the task's check passed.
        final_error: the task's error at the end, in ``error_unit`` (e.g. TCP-cube, mm).
        near_goal: the episode ended near the goal by the task's measure (``Task.near_goal``).
        controller: controller counter increases over the episode (heartbeat metric names).
        arms: per arm node, its ``safety.<check>`` counter increases over the episode.
        object_rise_max_m: highest rise of the object over where it lay at the start, m (None: the
            task grasps nothing).
        object_rise_end_m: its rise at the end, m.
        gripper_end_m: measured gripper opening at the end, m (None: not a grasping task).
    """

    episode: int
    success: bool
    final_error: float
    near_goal: bool
    error_name: str = "error"
    error_unit: str = "mm"
    controller: dict[str, float] = field(default_factory=dict)
    arms: dict[str, dict[str, float]] = field(default_factory=dict)
    object_rise_max_m: float | None = None
    object_rise_end_m: float | None = None
    gripper_end_m: float | None = None


@dataclass(frozen=True)
class Failure:
    """A failed episode's named cause (a key of :data:`CAUSES`), its detail line and every
    non-zero signal (``notes``)."""

    episode: int
    cause: str
    detail: str
    notes: tuple[str, ...] = ()


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` for every counter that grew (heartbeat metrics; a counter missing from
    ``before`` counts from 0). Non-counters (rates, percentiles) may also differ: callers read only
    the counters they know."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def _arm_events(arms: dict[str, dict[str, float]]) -> tuple[Counter, Counter, Counter]:
    """(faults, refusals, collision stops) over every arm, by check name (an arm's name is added
    where there are several)."""
    faults, refusals, stops = Counter(), Counter(), Counter()
    for arm, d in arms.items():
        tag = f"{arm}: " if len(arms) > 1 else ""
        for k, v in d.items():
            if not k.startswith("safety.") or v <= 0:
                continue
            check = k.removeprefix("safety.")
            if check in ARM_FAULTS:
                faults[tag + check] += int(v)
            elif check == "collision_stop":
                stops[tag + check] += int(v)
            elif check in NOT_REFUSALS or check.endswith("_clamped") or check.startswith("servo_"):
                continue
            else:
                refusals[tag + check] += int(v)
    return faults, refusals, stops


def _named(c: Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in c.most_common())


def classify(ev: EpisodeEvidence) -> Failure | None:
    """The named cause of a failed episode (None for a success); see the module's table."""
    if ev.success:
        return None
    c = ev.controller
    faults, refusals, stops = _arm_events(ev.arms)
    n = {k: int(c.get(k, 0)) for k in ("requests", "chunks", "errors", "bad_chunks", "refused_chunks")}
    n |= {k: int(c.get(k, 0)) for k in ("over_budget", "obs_holds", "skew_holds", "refused_repeats")}
    notes = [f"{k} {v}" for k, v in n.items() if v and k not in ("requests", "chunks")]
    notes += [f"arm {k} x{v}" for k, v in (faults + refusals + stops).items()]
    err = f"ended {ev.final_error:.1f} {ev.error_unit} from the goal ({ev.error_name})"
    rise_max, rise_end = ev.object_rise_max_m, ev.object_rise_end_m

    def out(cause: str, detail: str) -> Failure:
        return Failure(ev.episode, cause, f"{detail}; {err}", tuple(notes))

    if n["requests"] >= MIN_EVENTS and n["chunks"] == 0:
        return out("no_chunks", f"{n['requests']} requests, no chunk ({n['errors']} errors)")
    if sum(faults.values()) >= 1:  # one fault holds the arm for the rest of the episode
        return out("arm_fault", _named(faults))
    if sum(refusals.values()) >= MIN_EVENTS or (refusals and n["refused_repeats"]):
        # (the controller holds back a refused chunk that comes again: one refusal and its repeats count)
        repeats = f"; {n['refused_repeats']} equal chunks held back" if n["refused_repeats"] else ""
        return out("arm_refused", f"{sum(refusals.values())} schedules refused: {_named(refusals)}{repeats}")
    if sum(stops.values()) >= 1:
        return out("collision_stop", _named(stops))
    if (bad := n["bad_chunks"] + n["refused_chunks"] + n["over_budget"]) >= MIN_EVENTS:
        return out(
            "controller_refused",
            f"{bad} of {n['chunks'] + n['bad_chunks']} chunks (bad {n['bad_chunks']}, refused by the strategy "
            f"{n['refused_chunks']}, over budget {n['over_budget']})",
        )
    if n["skew_holds"] >= MIN_EVENTS:
        return out("skew_hold", f"{n['skew_holds']} observation windows refused for their camera skew")
    if n["obs_holds"] >= MIN_EVENTS:
        return out("obs_hold", f"{n['obs_holds']} holds on a stale stream")
    if rise_max is not None and rise_max >= LIFTED_M and (rise_end is None or rise_end < LIFTED_M):
        return out("dropped_object", f"lifted {rise_max * 1e3:.0f} mm, ended {1e3 * (rise_end or 0):.0f} mm up")
    if ev.gripper_end_m is not None and ev.gripper_end_m < CLOSED_EMPTY_M and (rise_max or 0) < LIFTED_M:
        return out("grasp_missed", f"gripper closed to {ev.gripper_end_m * 1e3:.0f} mm, object never lifted")
    if ev.near_goal:
        return out("timeout_near", "timed out")
    return out("timeout_far", "timed out")


def failure_counts(failures: list[Failure]) -> Counter:
    """How many failed episodes each cause explains, in :data:`CAUSES` order."""
    got = Counter(f.cause for f in failures)
    return Counter({k: got[k] for k in CAUSES if got[k]})
