"""Chunk execution as a pure core: the strategy, the committed plan, the inference delay d and the
figures that say how execution went.

:class:`ChunkExecutor` is what the controller asks "is a request due", "what prefix goes with it",
"what does this arriving chunk become" and "what does this control step send"; it answers from an
execution strategy (:mod:`robot_stack.control.strategies`: sync, async, ensemble, rtc), keeps the
:class:`~robot_stack.control.strategies.CommittedPlan` merged the way the arm node merges, and
measures d online (:class:`~robot_stack.control.chunking.DelayEstimator`, first inference left
out). Time is passed in; nothing here sends, sleeps or locks.
"""

from __future__ import annotations

import collections

import numpy as np

from robot_stack.comm.messages import ObservationWindow
from robot_stack.control.chunking import DelayEstimator, chunk_anchor_ns, chunk_problem
from robot_stack.control.strategies import STRATEGIES, CommittedPlan, Schedule


class ChunkExecutor:
    """Receding-horizon execution of action chunks (see the module docstring).

    Args:
        strategy: ``sync``, ``async``, ``ensemble`` or ``rtc``.
        dt_ns: control period, ns.
        exec_latency_ns: time from sending a waypoint to the arm acting on it, ns.
        execute_horizon: s, actions executed per chunk.
        action_dim: D (8 per arm).
        start_from_rest: a chunk that finds nothing planned since its observation is stamped from
            its arrival (:func:`~robot_stack.control.chunking.chunk_anchor_ns`).
        ensemble_m, ensemble_steps: temporal ensembling's weight decay and steps sent ahead.

    Attributes:
        counts: ``chunks``, ``dropped_actions``, ``late_steps``, ``over_budget``, ``refused_chunks``,
            ``chunks_from_rest``.
        delay: the inference delay estimate; the owner records each chunk's capture-to-arrival time.
        prompt: the task text every request carries (the owner sets it: the setup's, or an
            episode's start event's).
    """

    def __init__(
        self,
        strategy: str,
        dt_ns: int,
        exec_latency_ns: int,
        execute_horizon: int,
        action_dim: int,
        start_from_rest: bool = True,
        ensemble_m: float = 0.01,
        ensemble_steps: int = 4,
    ):
        kw = dict(m=ensemble_m, steps=ensemble_steps) if strategy == "ensemble" else {}
        self.strategy = STRATEGIES[strategy](dt_ns, exec_latency_ns, execute_horizon, **kw)
        self.name = strategy
        self.dt_ns = dt_ns
        self.plan = CommittedPlan(action_dim, dt_ns // 2)
        self.delay = DelayEstimator(dt_ns, initial_steps=2)
        self.start_from_rest = start_from_rest
        self.request_id = 0
        self.prompt = ""
        #: (D,) index array putting the policy's action dimensions in the robot's order (matched by
        #: name at start-up, ``control.chunking.action_order``); None: the same order
        self.action_order: np.ndarray | None = None
        self.counts: collections.Counter[str] = collections.Counter(
            dict.fromkeys(
                (
                    "chunks",
                    "dropped_actions",
                    "late_steps",
                    "over_budget",
                    "refused_chunks",
                    "chunks_from_rest",
                    "bad_chunks",
                    "stale_chunks",
                ),
                0,
            )
        )
        self.stages = StageTimer()
        self.first_lead_max_mm: float | None = None  # largest first waypoint -> TCP of a plan from rest, mm
        self.jumps_m: list[float] = []
        self.switch_jerk: list[float] = []

    # ------------------------------------------------------------------------------ requests
    def request_due(self, now_ns: int) -> bool:
        """A request should leave now (at most one per control period; sync: as the executed part
        of the plan ends within d)."""
        if now_ns < self.strategy.earliest_request_ns:
            return False
        return bool(self.strategy.request_due(now_ns, self.plan, self.delay.steps))

    def next_request_ns(self) -> int:
        """The earliest time a request may leave, ns."""
        return int(self.strategy.earliest_request_ns)

    def request(self, now_ns: int, obs, arrays: dict[str, np.ndarray]) -> tuple[ObservationWindow, bool]:
        """A request leaves now for the observation ``obs`` (an
        :class:`~robot_stack.control.observation.Observation`) with the policy's ``arrays``: the
        :class:`~robot_stack.comm.messages.ObservationWindow` to send, with the RTC prefix (the
        committed actions over the next chunk's first indices, d of them frozen) when the strategy
        sends one; and whether it does."""
        self.strategy.request_sent(now_ns)
        d = self.delay.stale_steps(self.strategy.exec_latency_ns)  # what runs from the old plan meanwhile
        prefix = self.strategy.request_prefix(obs.t_obs_ns, self.plan, d)
        if prefix is not None and self.action_order is not None:  # the policy's own order for its prefix
            prefix = (prefix[0][:, np.argsort(self.action_order)], prefix[1])
        self.request_id += 1
        return ObservationWindow(
            request_id=self.request_id,
            obs=arrays,
            obs_age_ns=(now_ns - obs.times_ns).astype(np.int64),
            committed_prefix=None if prefix is None else prefix[0],
            prefix_frozen=-1 if prefix is None else prefix[1],
            prompt=self.prompt,
        ), prefix is not None

    # ------------------------------------------------------------------------------ chunks
    def on_reply(
        self, reply, job, arrival_ns: int, now_ns: int, current: bool, driving: bool, n_arms: int = 1
    ) -> tuple[Schedule | None, str | None]:
        """A policy's reply (an :class:`~robot_stack.comm.messages.ActionChunk`) to request ``job``
        (:class:`~robot_stack.control.requests.Job`): checked (:func:`chunk_problem`: counted as
        ``bad_chunks``), timed (the delay d and the latency stages), dropped when the plan changed
        while the policy was thinking (``current`` False: ``stale_chunks``), then :meth:`on_chunk`.
        Returns ``(schedule or None, why not or None)``."""
        actions = np.asarray(reply.actions, np.float64)
        if self.action_order is not None and actions.ndim == 2 and actions.shape[1] == len(self.action_order):
            actions = actions[:, self.action_order]  # matched by name, never applied by position
        bad = chunk_problem(actions, n_arms)
        if bad is not None:
            self.counts["bad_chunks"] += 1
            return None, f"refused (#{self.counts['bad_chunks']}): {bad}"
        self.delay.add(arrival_ns - job.t_obs_ns)
        for stage, ns in (
            ("frame_age", job.t_assemble_ns - job.t_obs_ns),
            ("assembly", job.t_send_ns - job.t_assemble_ns),
            ("transport", arrival_ns - job.t_send_ns - reply.inference_ns),
            ("inference", reply.inference_ns),
        ):
            self.stages.add(stage, ns / 1e6)
        if not current:
            self.counts["stale_chunks"] += 1
            return None, None
        if not driving:
            return None, None
        return self.on_chunk(
            actions,
            job.t_obs_ns,
            arrival_ns,
            now_ns,
            int(round(reply.dt * 1e9)),
            reply.offset,
            reply.prefix_frozen if job.with_prefix else -1,
        )

    def on_chunk(
        self,
        actions: np.ndarray,
        t_obs_ns: int,
        arrival_ns: int,
        now_ns: int,
        dt_ns: int,
        offset: int,
        frozen: int = -1,
    ) -> tuple[Schedule | None, str | None]:
        """A checked, current chunk (H, D) arrived: ``(schedule to send now or None, why not)``.
        None without a reason: ensembling sends from :meth:`on_tick`; a reason: the strategy
        refused it, or every action was stale (counted as over budget).

        Args:
            t_obs_ns: its observation's anchor; arrival_ns: when it came; now_ns: now.
            dt_ns, offset: the chunk's own step and offset of action 0.
            frozen: the d it followed (RTC), -1 without a prefix.
        """
        self.counts["chunks"] += 1
        anchor = chunk_anchor_ns(t_obs_ns, arrival_ns, self.plan.end_ns) if self.start_from_rest else t_obs_ns
        self.counts["chunks_from_rest"] += anchor != t_obs_ns
        plan = self.strategy.on_chunk(actions, anchor, arrival_ns, dt_ns, offset, frozen)
        if plan is None:  # ensembling: the chunk joins the average, which goes out now (and each tick)
            return self.strategy.on_tick(now_ns), None
        if plan.refused:
            self.counts["refused_chunks"] += 1
            return None, f"refused: {plan.refused}"
        self.counts["dropped_actions"] += plan.dropped
        self.counts["late_steps"] += plan.late_steps
        if plan.over_budget:
            self.counts["over_budget"] += 1
            return None, "over budget: every action was stale"
        return Schedule(plan.stamps_ns, plan.actions), None

    def on_tick(self, now_ns: int) -> Schedule | None:
        """What this control step sends (ensembling), or None."""
        return self.strategy.on_tick(now_ns)

    def committed(
        self, stamps_ns: np.ndarray, actions: np.ndarray, now_ns: int, tcp: np.ndarray | None = None
    ) -> float | None:
        """A schedule goes to the arms (any origin): merge it into the plan as the arm node merges,
        measure the position jump and the commanded jerk at the switch. When nothing was planned up
        to now (the arm at rest) and ``tcp`` (the first arm's TCP position, m) is given, returns the
        distance of the first waypoint from it, m (kept as ``first_lead_max_mm``); else None."""
        from_rest = self.plan.end_ns is None or self.plan.end_ns < now_ns
        lead = None
        if from_rest and tcp is not None:
            lead = float(np.linalg.norm(actions[0, :3] - np.asarray(tcp)[:3]))
            self.first_lead_max_mm = max(self.first_lead_max_mm or 0.0, lead * 1e3)
        jump = self.plan.merge(stamps_ns, actions, now_ns)
        if jump is not None:
            self.jumps_m.append(jump)
            jerk = self.plan.jerk_at(int(stamps_ns[0]))
            if jerk is not None:
                self.switch_jerk.append(jerk)
        return lead

    def planned_until(self, now_ns: int) -> bool:
        """Something is planned beyond ``now_ns``."""
        return self.plan.end_ns is not None and self.plan.end_ns > now_ns

    def clear(self) -> None:
        """Drop the plan and the strategy's state (episode events, interventions, holds)."""
        self.plan.clear()
        self.strategy.reset()

    def metrics(self) -> dict[str, float]:
        """Counts, d, and the switch figures (flat str -> float)."""
        m = {k: float(v) for k, v in self.counts.items()}
        m.update(self.stages.metrics(), delay_steps=float(self.delay.steps))
        if self.first_lead_max_mm is not None:  # the arm node refuses a first waypoint beyond its max_jump_ee
            m["first_lead_max_mm"] = self.first_lead_max_mm
        if self.jumps_m:
            j = np.array(self.jumps_m)
            m.update(
                switch_jump_mean_mm=float(j.mean() * 1e3),
                switch_jump_max_mm=float(j.max() * 1e3),
                switches=float(len(j)),
            )
        if self.switch_jerk:  # commanded waypoint jerk at the switches, m/s^3
            j = np.array(self.switch_jerk)
            m.update(switch_jerk_mean=float(j.mean()), switch_jerk_p99=float(np.percentile(j, 99)))
        return m


class StageTimer:
    """Named stages of the latency breakdown (ms), the recent ``maxlen`` of each: the controller's
    capture -> request -> policy -> plan -> send, reported as p50/p99 in the heartbeat."""

    STAGES = ("frame_arrival", "frame_age", "assembly", "transport", "inference", "planning", "send")

    def __init__(self, stages=STAGES, maxlen: int = 500):
        self.samples = {k: collections.deque(maxlen=maxlen) for k in stages}

    def add(self, stage: str, ms: float) -> None:
        self.samples[stage].append(float(ms))

    def metrics(self, prefix: str = "stage_") -> dict[str, float]:
        out = {}
        for k, v in self.samples.items():
            if v:
                a = np.array(v)
                out[f"{prefix}{k}_p50_ms"] = float(np.percentile(a, 50))
                out[f"{prefix}{k}_p99_ms"] = float(np.percentile(a, 99))
        return out
