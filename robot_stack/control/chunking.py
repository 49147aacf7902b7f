"""Timing math of action-chunk execution (docs/design.md, "Action chunks and receding-horizon execution").

Terms: prediction horizon H (actions per chunk), execution horizon s, inference delay d (control
steps), control period dt, offset (step index of action 0 relative to the observation).
Action i of a chunk observed at t_obs is meant for ``t_obs + (i + offset) * dt``.

Pure functions and small classes, no processes:

- :func:`plan_chunk`: which actions of an arriving chunk still lie in the future (after the
  execution latency), how late the chunk is, and whether it is over budget (all stale -> hold).
- :class:`TemporalEnsembler`: ACT's temporal ensembling (Zhao et al. 2023, "Learning Fine-Grained
  Bimanual Manipulation with Low-Cost Hardware"): all predictions for one time step averaged with
  weights exp(-m * i), i = 0 for the oldest prediction.
- :func:`committed_prefix` and :func:`rtc_guidance_weights`: real-time chunking (Black et al.
  2025, "Real-Time Execution of Action Chunking Flow Policies"): the first d actions of the next
  chunk are frozen to what is already committed; the soft mask decays over the overlap.
- :class:`DelayEstimator`: inference delay d measured online from observation-to-arrival times.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np


def action_times_ns(t_obs_ns: int, horizon: int, dt_ns: int, offset: int = 0) -> np.ndarray:
    """(H,) int64 target times of a chunk's actions: ``t_obs + (i + offset) * dt``."""
    return t_obs_ns + (np.arange(horizon, dtype=np.int64) + offset) * dt_ns


def chunk_anchor_ns(t_obs_ns: int, arrival_ns: int, plan_end_ns: int | None) -> int:
    """The time a chunk's actions are stamped from (``t_obs`` in :func:`action_times_ns`), ns.

    Latency compensation (:func:`plan_chunk` dropping the actions due during inference) is right
    while the arm executes an earlier plan: it kept moving while the policy thought. A chunk that
    arrives with nothing planned since its observation (``plan_end_ns`` None or before
    ``t_obs_ns``: an episode's first chunk, the first after a hold) found the arm at rest, where
    it still is; dropping the actions of the inference time would start the arm d steps into a
    motion it never made (on the pick task, first waypoints 135-157 mm from the resting TCP, which
    the arm node refuses as jumps). Such a chunk is stamped from its arrival instead, so that its
    first actions run first. Diffusion Policy's real-robot evaluation sidesteps the same thing
    by running the policy once before the episode starts (Chi et al. 2023, ``eval_real_robot.py``).

    Args:
        t_obs_ns: capture time of the chunk's newest observation, ns.
        arrival_ns: when the chunk arrived, ns.
        plan_end_ns: time of the last planned action when the chunk arrived, or None.
    Returns:
        ``t_obs_ns`` while a plan ran since the observation, else ``max(t_obs_ns, arrival_ns)``.
    """
    if plan_end_ns is not None and plan_end_ns >= t_obs_ns:
        return int(t_obs_ns)
    return int(max(t_obs_ns, arrival_ns))


@dataclass(frozen=True)
class ChunkPlan:
    """What to execute of one chunk.

    Attributes:
        stamps_ns: (k,) target times of the actions to execute.
        actions: (k, D) those actions.
        first_index: chunk index of the first executed action (H if none).
        dropped: number of actions dropped as stale (time <= arrival + execution latency).
        late_steps: stale actions that were meant for after the observation (i + offset > 0):
            how many steps late the chunk arrived ("late by N steps").
        over_budget: every action was stale: the arm holds and the step is counted.
        refused: why the strategy refused the chunk (nothing is executed), or None.
    """

    stamps_ns: np.ndarray
    actions: np.ndarray
    first_index: int
    dropped: int
    late_steps: int
    over_budget: bool
    refused: str | None = None


def plan_chunk(
    actions: np.ndarray,
    t_obs_ns: int,
    arrival_ns: int,
    dt_ns: int,
    offset: int = 0,
    exec_latency_ns: int = 0,
    execute: int | None = None,
) -> ChunkPlan:
    """Turn a chunk into the timed waypoints to execute.

    Args:
        actions: (H, D) the chunk.
        t_obs_ns: capture time of the newest observation the chunk was computed from, ns.
        arrival_ns: when the chunk arrived, ns.
        dt_ns: control period, ns.
        offset: step offset of action 0.
        exec_latency_ns: command-to-motion latency; actions at or before arrival + latency are stale.
        execute: execution horizon s (None: every non-stale action).

    Returns:
        A :class:`ChunkPlan`. Worked example (docs/design.md): dt = 0.1 s, H = 16, s = 8, latency 10 ms,
        t_obs = 10.000 s, arrival 10.085 s -> actions 1..8 at 10.1..10.8 s.
    """
    actions = np.asarray(actions)
    H = actions.shape[0]
    stamps = action_times_ns(t_obs_ns, H, dt_ns, offset)
    cutoff = arrival_ns + exec_latency_ns
    fresh = np.nonzero(stamps > cutoff)[0]
    first = int(fresh[0]) if len(fresh) else H
    late = int(np.sum((np.arange(first) + offset) > 0))
    if first >= H:
        return ChunkPlan(stamps[:0], actions[:0], H, H, late, True)
    last = H if execute is None else min(H, first + execute)
    return ChunkPlan(stamps[first:last], actions[first:last], first, first, late, False)


class TemporalEnsembler:
    """ACT temporal ensembling over overlapping chunks.

    Args:
        dt_ns: control period, ns.
        m: weight decay; weights exp(-m * i), i = 0 for the oldest chunk predicting the step.
            m > 0 favours older predictions (ACT's default m = 0.01), m < 0 newer ones.
        max_chunks: chunks kept (older ones are forgotten).
    """

    def __init__(self, dt_ns: int, m: float = 0.01, max_chunks: int = 64):
        self.dt_ns, self.m = dt_ns, m
        self._chunks: collections.deque = collections.deque(maxlen=max_chunks)

    def add(self, t_obs_ns: int, actions: np.ndarray, offset: int = 0) -> None:
        """Register a chunk (its actions are stamped ``t_obs + (i + offset) dt``)."""
        self._chunks.append((action_times_ns(t_obs_ns, len(actions), self.dt_ns, offset), np.asarray(actions, float)))

    def weights(self, n: int) -> np.ndarray:
        """Normalized weights of ``n`` predictions, oldest first."""
        w = np.exp(-self.m * np.arange(n))
        return w / w.sum()

    def action_at(self, t_ns: int) -> np.ndarray | None:
        """Ensembled action for control step time ``t_ns`` (predictions within dt/2), or None."""
        preds = []
        for stamps, acts in self._chunks:  # oldest first
            j = int(np.argmin(np.abs(stamps - t_ns)))
            if abs(int(stamps[j]) - t_ns) <= self.dt_ns // 2:
                preds.append(acts[j])
        if not preds:
            return None
        return np.einsum("i,ij->j", self.weights(len(preds)), np.stack(preds))

    def prune(self, before_ns: int) -> None:
        """Forget chunks whose last action is before ``before_ns``."""
        while self._chunks and self._chunks[0][0][-1] < before_ns:
            self._chunks.popleft()


def committed_prefix(
    stamps_ns: np.ndarray, actions: np.ndarray, t_obs_ns: int, dt_ns: int, d: int, offset: int = 0
) -> np.ndarray:
    """The first ``d`` actions of the next chunk, frozen to what is already committed (RTC).

    Args:
        stamps_ns, actions: (k,) and (k, D) the schedule already sent to the arm.
        t_obs_ns: observation time of the next request.
        dt_ns, offset: the chunk timing.
        d: inference delay in steps.
    Returns:
        (d', D) committed actions for next-chunk indices 0..d'-1, d' <= d: the prefix stops at the
        first index with no committed action within dt/2 of its time.
    """
    out = []
    for t in action_times_ns(t_obs_ns, d, dt_ns, offset):
        if len(stamps_ns) == 0:
            break
        j = int(np.argmin(np.abs(stamps_ns - t)))
        if abs(int(stamps_ns[j]) - int(t)) > dt_ns // 2:
            break
        out.append(actions[j])
    return np.array(out, dtype=np.float32).reshape(len(out), actions.shape[1] if actions.ndim == 2 else 0)


def rtc_guidance_weights(horizon: int, d: int, s: int) -> np.ndarray:
    """RTC soft mask W (H,) over the next chunk (Black et al. 2025, eq. 5).

    W_i = 1 for i < d (frozen prefix); for d <= i < H - s, W_i = c_i (e^{c_i} - 1) / (e - 1) with
    c_i = (H - s - i) / (H - s - d + 1) (exponentially decaying guidance over the overlap); 0 for
    i >= H - s (actions no earlier chunk committed to).
    """
    if not (0 <= d <= horizon and 0 <= s <= horizon):
        raise ValueError(f"need 0 <= d, s <= H (H={horizon}, d={d}, s={s})")
    w = np.zeros(horizon)
    w[:d] = 1.0
    denom = horizon - s - d + 1
    for i in range(d, max(d, horizon - s)):
        c = (horizon - s - i) / denom
        w[i] = c * (math.exp(c) - 1) / (math.e - 1)
    return w


class DelayEstimator:
    """Inference delay d (control steps) measured online.

    Records observation-capture-to-chunk-arrival times and reports
    ``d = ceil(quantile_q(delays) / dt)`` over the recent window (a high quantile so the frozen
    prefix covers nearly every inference).

    Args:
        dt_ns: control period, ns.
        window: samples kept.
        quantile: in (0, 1].
        initial_steps: d before any sample.
        warmup: the first samples left out of the estimate: the first inference pays for lazy
            initialisation, compilation and caches (often 10-100x a steady one), and kept in a
            high quantile it would inflate d for a whole window and skip most of every chunk
            (lerobot#4223: 21 of 30 actions skipped). Counted in :attr:`warmup_left_out`.
    """

    def __init__(self, dt_ns: int, window: int = 50, quantile: float = 0.9, initial_steps: int = 1, warmup: int = 1):
        self.dt_ns, self.quantile, self.initial = dt_ns, quantile, initial_steps
        self._samples: collections.deque = collections.deque(maxlen=window)
        self._warmup = int(warmup)
        self.warmup_left_out = 0

    def add(self, delay_ns: int) -> None:
        """Record one observation-capture-to-arrival time, ns (the first ``warmup`` are left out)."""
        if self.warmup_left_out < self._warmup:
            self.warmup_left_out += 1
            return
        self._samples.append(int(delay_ns))

    @property
    def steps(self) -> int:
        if not self._samples:
            return self.initial
        return int(math.ceil(float(np.quantile(np.array(self._samples), self.quantile)) / self.dt_ns))

    #: the quantile of the delays the frozen prefix covers: higher than the request timing's, since
    #: a chunk arriving after the d it followed is refused whole (RTC), while a larger d only
    #: freezes a few more actions of the overlap
    FREEZE_QUANTILE = 0.98

    def stale_steps(self, exec_latency_ns: int = 0, offset: int = 0) -> int:
        """The chunk indices a chunk arriving after the ``FREEZE_QUANTILE`` delay finds due (stale,
        run from the old plan): ``floor((q + exec_latency_ns) / dt) + 1 - offset``, as
        :func:`plan_chunk` drops them (an action is stale at or before arrival + latency). RTC's
        frozen prefix d must cover them: ``ceil(delay / dt)`` alone is one short whenever the
        latency or a delay just past a step boundary crosses into the next step (at 50 Hz with
        235 ms of inference and 10 ms of latency: 12 against the 13 that ran)."""
        if not self._samples:
            return self.initial
        q = float(np.quantile(np.array(self._samples), max(self.quantile, self.FREEZE_QUANTILE)))
        return max(0, int((q + exec_latency_ns) // self.dt_ns) + 1 - int(offset))


def edge_padded(prefix: np.ndarray, horizon: int) -> np.ndarray:
    """An RTC prefix (k, D), 1 <= k, extended to (horizon, D) by repeating its last real action.

    A prefix shorter than the chunk must never be padded with zeros: in a policy's normalized space
    zero decodes to the dataset's mean action, and any weight that reaches the padding (a soft
    mask, a bug, a model trained on full-length prefixes) pulls the arm toward that mean (the
    failure LeRobot's RTC engine had, lerobot#4454). Repeating the last action makes the padding
    mean "stay where the prefix ends".

    Raises:
        ValueError: an empty prefix, or one longer than ``horizon``.
    """
    prefix = np.asarray(prefix)
    if prefix.ndim != 2 or not 1 <= len(prefix) <= horizon:
        raise ValueError(f"an RTC prefix is (k, D) with 1 <= k <= H = {horizon}, got shape {prefix.shape}")
    return np.concatenate([prefix, np.repeat(prefix[-1:], horizon - len(prefix), axis=0)])


def chunk_problem(actions: np.ndarray, n_arms: int = 1) -> str | None:
    """Why a policy's chunk cannot be executed (None if it can): it must be (H >= 1, 8 per arm)
    TCP poses + gripper [x y z qx qy qz qw gripper] per arm, finite, with non-zero quaternions. The
    arm nodes check the rest (limits, workspace, jumps).

    Args:
        actions: the chunk as received.
        n_arms: arms the chunk covers, in the controller's arm order.
    """
    d = 8 * n_arms
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] != d:
        return f"actions of shape {actions.shape}, expected (H >= 1, {d}) [x y z qx qy qz qw gripper]" + (
            f" for each of {n_arms} arms" if n_arms > 1 else ""
        )
    if not np.all(np.isfinite(actions)):
        return "actions contain NaN or inf"
    quats = actions.reshape(len(actions), -1, 8)[:, :, 3:7]
    if np.any(np.linalg.norm(quats, axis=2) < 1e-6):
        return "a zero quaternion"
    return None


def action_order(policy_names, robot_names) -> np.ndarray | None:
    """Match a policy's action dimensions to the robot's by name, never by position.

    Returns the index array ``order`` with ``chunk[:, order]`` in the robot's order (None when the
    orders already agree). A checkpoint whose action names come in another order than the robot's
    (a ``qw`` first quaternion, another arm first, joints listed differently) is remapped instead
    of commanding each dimension with another's value (the failure of lerobot#4122 and #4452).

    Raises:
        ValueError: the names differ (missing or extra ones named), or a name repeats.
    """
    pol, rob = list(policy_names), list(robot_names)
    if len(set(pol)) != len(pol):
        raise ValueError(f"the policy names an action dimension twice: {sorted({n for n in pol if pol.count(n) > 1})}")
    if set(pol) != set(rob):
        missing, extra = sorted(set(rob) - set(pol)), sorted(set(pol) - set(rob))
        raise ValueError(
            "the policy's action names do not match the robot's"
            + (f": missing {missing}" if missing else "")
            + (f", unknown {extra}" if extra else "")
        )
    if pol == rob:
        return None
    return np.array([pol.index(n) for n in rob], np.int64)
