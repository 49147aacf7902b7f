"""Execution strategies for action chunks, as plain classes over an injected clock (docs/design.md,
"Action chunks and receding-horizon execution").

A strategy answers four questions; the controller node only does the I/O and the threads:

1. when to request (:meth:`ExecutionStrategy.request_due`);
2. what prefix to send with the request (:meth:`ExecutionStrategy.request_prefix`);
3. what a chunk that arrives at a given time turns into (:meth:`ExecutionStrategy.on_chunk`);
4. what each control step sends (:meth:`ExecutionStrategy.on_tick`).

Every time is passed in (ns on the stack clock), so the classes are tested with a fake clock.
The :class:`CommittedPlan` is the trajectory the arm will execute, merged with the arm node's own
rule (:func:`robot_stack.control.interpolation.merge_mask`), so the controller's picture of what is
committed cannot drift from the arm's.

- :class:`SyncStrategy`: synchronous receding horizon (Chi et al. 2023, Diffusion Policy): execute
  s actions, request the next chunk so that it arrives (measured delay d) as they end.
- :class:`AsyncStrategy`: inference overlaps execution (at most one request per control period);
  each chunk takes over at its first action not yet due.
- :class:`EnsembleStrategy`: ACT temporal ensembling (Zhao et al. 2023): each control step sends
  the exp(-m i)-weighted average of every chunk's prediction for the next steps.
- :class:`RTCStrategy`: real-time chunking (Black et al. 2025, arXiv 2506.07339): like async, and
  each request carries the d actions already committed for the next chunk's first steps.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from robot_stack.control.chunking import ChunkPlan, TemporalEnsembler, committed_prefix, plan_chunk
from robot_stack.control.interpolation import merge_mask


@dataclass(frozen=True)
class Schedule:
    """Timed waypoints to send: ``stamps_ns`` (k,) int64, ns; ``actions`` (k, D) float64."""

    stamps_ns: np.ndarray
    actions: np.ndarray


class CommittedPlan:
    """The actions the arm will execute, as sent: merged with the arm node's rule.

    A new schedule replaces the plan from its first waypoint on; older waypoints before it stay
    (:func:`merge_mask`). The plan also remembers ``memory_ns`` of the past, for committed-prefix
    look-ups at observation times.

    Args:
        dim: action dimension D.
        tol_ns: two stamps within this are the same control step (dt / 2).
        memory_ns: past kept, ns.
    """

    def __init__(self, dim: int, tol_ns: int, memory_ns: int = 2_000_000_000):
        self.dim, self.tol_ns, self.memory_ns = dim, int(tol_ns), int(memory_ns)
        self.clear()

    def clear(self) -> None:
        """Forget everything (episode boundaries, interventions, holds)."""
        self.stamps_ns = np.zeros(0, np.int64)
        self.actions = np.zeros((0, self.dim))

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def end_ns(self) -> int | None:
        """Time of the last planned action, or None when nothing is planned."""
        return int(self.stamps_ns[-1]) if len(self.stamps_ns) else None

    def action_at(self, t_ns: int) -> np.ndarray | None:
        """The planned action for the control step at ``t_ns`` (within ``tol_ns``), or None."""
        if not len(self.stamps_ns):
            return None
        j = int(np.argmin(np.abs(self.stamps_ns - t_ns)))
        return self.actions[j] if abs(int(self.stamps_ns[j]) - int(t_ns)) <= self.tol_ns else None

    def merge(self, stamps_ns: np.ndarray, actions: np.ndarray, now_ns: int) -> float | None:
        """Merge a schedule sent to the arm at ``now_ns``.

        Returns:
            The switch jump: distance (m, first three action dims) between the new schedule's first
            action and the plan's action for that step, or None when the plan had none there.
        """
        stamps_ns = np.asarray(stamps_ns, np.int64)
        actions = np.asarray(actions, float)
        jump = None
        old = self.action_at(int(stamps_ns[0])) if len(stamps_ns) else None
        if old is not None:
            jump = float(np.linalg.norm(old[:3] - actions[0, :3]))
        keep = merge_mask(self.stamps_ns, int(stamps_ns[0]) if len(stamps_ns) else None, now_ns - self.memory_ns)
        self.stamps_ns = np.concatenate([self.stamps_ns[keep], stamps_ns])
        self.actions = np.concatenate([self.actions[keep], actions])
        return jump

    def jerk_at(self, t_ns: int) -> float | None:
        """Commanded jerk (m/s^3, norm over the first three action dims) at the plan's waypoint
        at ``t_ns`` (e.g. a switch, the new schedule's first stamp): 3! times the third divided
        difference over the waypoints two before it and one after (a non-uniform grid is
        allowed: chunks observed at different times are stamped on different grids). None when
        the plan has no such four waypoints."""
        if len(self.stamps_ns) < 4:
            return None
        k = int(np.argmin(np.abs(self.stamps_ns - t_ns)))
        if abs(int(self.stamps_ns[k]) - int(t_ns)) > self.tol_ns or k < 2 or k + 1 >= len(self.stamps_ns):
            return None
        t = (self.stamps_ns[k - 2 : k + 2] - self.stamps_ns[k - 2]) / 1e9
        f = [a[:3] for a in self.actions[k - 2 : k + 2]]
        if np.any(np.diff(t) <= 0):
            return None
        for order in (1, 2, 3):  # divided differences in place
            f = [(f[i + 1] - f[i]) / (t[i + order] - t[i]) for i in range(len(f) - 1)]
        return float(np.linalg.norm(6.0 * f[0]))

    def prefix(self, t_obs_ns: int, dt_ns: int, d: int, offset: int = 0) -> np.ndarray:
        """(d', D) planned actions for a chunk observed at ``t_obs_ns``, indices 0..d'-1 (d' <= d,
        stopping at the first step with no planned action); see :func:`committed_prefix`."""
        return committed_prefix(self.stamps_ns, self.actions, t_obs_ns, dt_ns, d, offset)


class ExecutionStrategy(ABC):
    """Base: at most one request per control period; a chunk becomes every fresh action.

    Args:
        dt_ns: control period, ns.
        exec_latency_ns: command-to-motion latency; actions due before arrival + latency are stale.
        execute_horizon: s, actions executed per chunk (sync).
    """

    name: ClassVar[str] = ""

    def __init__(self, dt_ns: int, exec_latency_ns: int = 0, execute_horizon: int = 8):
        self.dt_ns, self.exec_latency_ns, self.s = int(dt_ns), int(exec_latency_ns), int(execute_horizon)
        self._next_request_ns = 0

    def reset(self) -> None:
        """Forget chunk state (episode boundaries, interventions, holds)."""

    @property
    def earliest_request_ns(self) -> int:
        """No request before this time (one control period after the last), ns."""
        return self._next_request_ns

    def request_due(self, now_ns: int, plan: CommittedPlan, delay_steps: int) -> bool:
        """Whether to request a chunk now, given what is planned and the measured delay d (steps)."""
        return now_ns >= self._next_request_ns

    def request_sent(self, now_ns: int) -> None:
        """A request left at ``now_ns`` (the next is due one control period later at the earliest:
        back-to-back inference would replan on every sample's noise, faster than the arm follows)."""
        self._next_request_ns = now_ns + self.dt_ns

    def request_prefix(self, t_obs_ns: int, plan: CommittedPlan, delay_steps: int) -> tuple[np.ndarray, int] | None:
        """What to send with the request (RTC): the planned actions (k, D) for the next chunk's
        indices 0..k-1 and how many of them are frozen (d), or None."""
        return None

    def on_chunk(
        self, actions: np.ndarray, t_obs_ns: int, arrival_ns: int, dt_ns: int, offset: int = 0, frozen: int = -1
    ) -> ChunkPlan | None:
        """What an arriving chunk (H, D) becomes: the waypoints to send now (``plan.stamps_ns``,
        ``plan.actions``; ``plan.over_budget`` when all are stale, ``plan.refused`` when the
        strategy will not use it), or None when the strategy sends from :meth:`on_tick` instead.
        ``frozen``: the d the policy followed or conditioned on (-1: no prefix)."""
        return plan_chunk(actions, t_obs_ns, arrival_ns, dt_ns, offset, self.exec_latency_ns, execute=None)

    def on_tick(self, now_ns: int) -> Schedule | None:
        """What this control step sends, or None."""
        return None


class SyncStrategy(ExecutionStrategy):
    """Synchronous receding horizon: execute s actions of each chunk; request when the planned
    actions end within the measured delay (d steps), so the next chunk lands as they run out."""

    name = "sync"

    def request_due(self, now_ns: int, plan: CommittedPlan, delay_steps: int) -> bool:
        if not super().request_due(now_ns, plan, delay_steps):
            return False
        end = plan.end_ns
        return end is None or now_ns >= end - delay_steps * self.dt_ns

    def on_chunk(self, actions, t_obs_ns, arrival_ns, dt_ns, offset=0, frozen=-1):
        return plan_chunk(actions, t_obs_ns, arrival_ns, dt_ns, offset, self.exec_latency_ns, execute=self.s)


class AsyncStrategy(ExecutionStrategy):
    """Asynchronous: request every control period while the arm executes; each new chunk takes
    over at its first action not yet due (the arm merges it at "now")."""

    name = "async"


class RTCStrategy(AsyncStrategy):
    """Real-time chunking: like async, and each request carries the previous plan over the whole
    overlap with the next chunk, the first d actions of it frozen (d measured online: the arm
    executes them while the policy thinks). The policy follows the frozen part and is guided toward
    the rest with RTC's soft mask (inference-time RTC), or conditions on the frozen part when it
    was trained to (training-time RTC)."""

    name = "rtc"

    def __init__(self, dt_ns: int, exec_latency_ns: int = 0, execute_horizon: int = 8):
        super().__init__(dt_ns, exec_latency_ns, execute_horizon)
        self.horizon = 64  # H, learned from the first chunk; the overlap is never longer

    def on_chunk(self, actions, t_obs_ns, arrival_ns, dt_ns, offset=0, frozen=-1):
        """As async; a chunk that arrived later than the d it followed is refused (the actions
        between d and its first fresh one ran from the old plan while the chunk's own went
        another way, so continuing it could jump; Black et al., arXiv 2512.05964, do the same)."""
        self.horizon = len(actions)
        plan = super().on_chunk(actions, t_obs_ns, arrival_ns, dt_ns, offset)
        if frozen > 0 and not plan.over_budget and plan.first_index > frozen:
            return replace(
                plan,
                stamps_ns=plan.stamps_ns[:0],
                actions=plan.actions[:0],
                refused=f"arrived {plan.first_index} steps after its observation, it followed only d = {frozen}",
            )
        return plan

    def request_prefix(self, t_obs_ns, plan, delay_steps):
        """The overlap and d = min(measured delay, s, H - s) (RTC needs d <= s <= H - d)."""
        overlap = plan.prefix(t_obs_ns, self.dt_ns, self.horizon)
        if not len(overlap):
            return None
        d = min(int(delay_steps), self.s, max(self.horizon - self.s, 0), len(overlap))
        return overlap, d


class EnsembleStrategy(ExecutionStrategy):
    """ACT temporal ensembling: chunks are kept, and every control step sends the next ``steps``
    control-grid actions, each the exp(-m i)-weighted average (i = 0 oldest) of every chunk's
    prediction for that step.

    Args:
        m: ensembling weight decay (ACT: 0.01).
        steps: control steps sent ahead on each tick.
    """

    name = "ensemble"

    def __init__(self, dt_ns: int, exec_latency_ns: int = 0, execute_horizon: int = 8, m: float = 0.01, steps: int = 4):
        super().__init__(dt_ns, exec_latency_ns, execute_horizon)
        self.m, self.steps = m, steps
        self.reset()

    def reset(self) -> None:
        self.ensembler = TemporalEnsembler(self.dt_ns, self.m)

    def on_chunk(self, actions, t_obs_ns, arrival_ns, dt_ns, offset=0, frozen=-1):
        self.ensembler.add(t_obs_ns, np.asarray(actions, float), offset)
        return None

    def on_tick(self, now_ns: int) -> Schedule | None:
        t = now_ns + self.exec_latency_ns
        t_next = (t // self.dt_ns + 1) * self.dt_ns  # the next control-grid times
        self.ensembler.prune(now_ns - 2 * self.dt_ns)
        stamps, acts = [], []
        for k in range(self.steps):
            a = self.ensembler.action_at(t_next + k * self.dt_ns)
            if a is None:
                break
            stamps.append(t_next + k * self.dt_ns)
            acts.append(a)
        if not acts:
            return None
        return Schedule(np.array(stamps, np.int64), np.array(acts))


STRATEGIES: dict[str, type[ExecutionStrategy]] = {
    c.name: c for c in (SyncStrategy, AsyncStrategy, EnsembleStrategy, RTCStrategy)
}
