"""The oracle policy (sim only): the task's scripted expert as a chunking policy, planned from the
sim's ground truth at each observation's time.

It measures the stack's execution apart from learning quality: its chunks are as good as the
demonstrations' expert, so what a strategy, a control rate, a chunk length or a server latency
costs shows alone. It is the **one exception** to "nothing outside the sim reads the sim scene":
it subscribes to the sim world's ``sim/objects`` (cube pose, target) and must never serve a robot.

Each request: the observation's time ``t_obs`` (its receipt at the policy node less the newest
observation's age) picks the object state nearest it; the expert (the task's own,
:meth:`robot_stack.tasks.reach.ReachTask.expert` logic: ``ReachExpert``, ``PickExpert``) is rolled
out for H steps of ``dt`` from the observed TCP, assuming the TCP follows its carrot (and a grasped
cube follows the TCP); action i is the carrot and gripper command at ``t_obs + (i + offset) dt``.
The expert's phase carries over between requests: the next request starts from the rollout's
state at its own ``t_obs`` (the steps since the previous one), so a receding-horizon execution sees
one continuous expert. A pause of more than ``reset_after_s`` between requests is a new episode.
With an RTC prefix, its first d actions are kept as committed. Configurable latency jitter (on top
of the node's ``delay_s``) and Gaussian action noise make it behave like a served learned policy.
"""

from __future__ import annotations

import copy
import time
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.control.features import ACTION_NAMES
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import DeviceConfig

from .base import Policy, PolicyMetadata, followed_prefix


class OraclePolicy(Policy):
    """The task's expert rolled out into action chunks (see the module doc).

    Args:
        task: a task object with ``expert`` logic: ``"reach"`` or ``"pick"`` tasks
            (:class:`~robot_stack.tasks.reach.ReachTask`, :class:`~robot_stack.tasks.pick.PickTask`).
        objects: ``objects(t_ns)`` -> the sim's ``ObjectState`` nearest ``t_ns`` (None before any).
        speed: the expert's carrot speed, m/s. horizon: H. obs_horizon: To. dt: action period, s.
        noise_std: std of Gaussian noise added to each action's position, m.
        jitter_s: extra inference time, uniform in [0, jitter_s], s.
        reset_after_s: a longer pause between requests starts a new episode, s.
        seed: RNG seed of the noise and jitter.

    Raises:
        ValueError: a task without a single-arm expert (lift: two arms).
    """

    def __init__(
        self,
        task,
        objects,
        speed: float = 0.15,
        horizon: int = 16,
        obs_horizon: int = 2,
        dt: float = 0.1,
        noise_std: float = 0.0,
        jitter_s: float = 0.0,
        reset_after_s: float = 1.0,
        seed: int = 0,
    ):
        from robot_stack.tasks.pick import PickExpert, PickTask
        from robot_stack.tasks.reach import ReachExpert

        self.task, self.objects = task, objects
        if isinstance(task, PickTask):
            self._new = lambda: PickExpert(task, speed=speed, jitter=0.0, miss_rate=0.0)
            self.grasps = True
        elif getattr(task, "name", "") == "reach":
            self._new = lambda: ReachExpert(task, speed=speed, jitter=0.0)
            self.grasps = False
        else:
            raise ValueError(f"oracle: no single-arm expert for task {getattr(task, 'name', task)!r} (reach, pick)")
        self.noise_std, self.jitter_s, self.reset_after_ns = noise_std, jitter_s, int(reset_after_s * 1e9)
        self.rng = np.random.default_rng(seed)
        self.metadata = PolicyMetadata(
            obs_shapes={"ee_pose": ((7,), "<f4")},
            obs_horizon=obs_horizon,
            horizon=horizon,
            action_dim=8,
            action_space="ee_pose+gripper",
            dt=dt,
            offset=0,
            supports_prefix=True,
            action_names=ACTION_NAMES,
        )
        self._t_obs: list[int] = []  # the batch's observation times (observed_at)
        # the previous rollout: (its t_obs, the expert before it, the expert after each of its steps)
        self._prev: tuple[int, object, list] | None = None

    def observed_at(self, t_obs_ns: list[int]) -> None:
        """The observation times (stack clock, ns) of the next ``predict_batch``'s requests."""
        self._t_obs = list(t_obs_ns)

    def _expert_at(self, t_obs: int):
        """The expert as the previous rollout left it at ``t_obs`` (a fresh one for a new episode)."""
        if self._prev is None or t_obs - self._prev[0] > self.reset_after_ns + len(self._prev[2]) * self._dt_ns:
            return self._new()
        t0, first, after = self._prev
        k = int((t_obs - t0) // self._dt_ns)  # actions whose time has come: steps taken
        return copy.deepcopy(first if k <= 0 else after[min(k, len(after)) - 1])

    @property
    def _dt_ns(self) -> int:
        return int(round(self.metadata.dt * 1e9))

    def _step(self, expert, tcp: np.ndarray, cube: np.ndarray, target_xy: np.ndarray):
        if self.grasps:
            return expert.step(tcp, cube, target_xy, self.metadata.dt)
        return expert.step(tcp, cube, self.metadata.dt)

    def predict(self, obs, committed_prefix=None, frozen=None):
        m = self.metadata
        t_obs = self._t_obs.pop(0) if self._t_obs else now_ns()
        if self.jitter_s:
            time.sleep(float(self.rng.uniform(0.0, self.jitter_s)))
        state = self.objects(t_obs)
        if state is None:
            raise RuntimeError("oracle: no sim/objects state yet (is the sim world running?)")
        cube = np.asarray(state.cube_pose[:3], float)
        target = np.asarray(state.target_xy, float)
        tcp = np.asarray(obs["ee_pose"][-1], float)
        expert = self._expert_at(t_obs)
        first, after = copy.deepcopy(expert), []
        out = np.empty((m.horizon, 8), np.float32)
        held = None  # the cube's offset from the TCP while the rollout carries it
        for i in range(m.horizon):
            cmd = self._step(expert, tcp, cube, target)
            after.append(copy.deepcopy(expert))
            out[i, :7], out[i, 7] = cmd.value, cmd.gripper
            tcp = np.asarray(cmd.value, float)  # the TCP follows its carrot
            if self.grasps:  # a closed gripper past the close phase carries the cube
                carrying = expert.PHASES[expert.phase] in ("lift", "carry", "lower")
                if carrying and held is None:
                    held = cube - tcp[:3]
                elif not carrying:
                    held = None
                if held is not None:
                    cube = tcp[:3] + held
        self._prev = (t_obs, first, after)
        if self.noise_std:
            out[:, :3] += self.rng.normal(0.0, self.noise_std, (m.horizon, 3)).astype(np.float32)
        d = followed_prefix(committed_prefix, frozen, m.horizon)
        self.last_frozen = d if committed_prefix is not None else -1
        if d:
            out[:d] = np.asarray(committed_prefix[:d], np.float32)
        return out


class OracleConfig(DeviceConfig):
    """Policy backend ``oracle`` (sim only): the task's scripted expert rolled out into chunks from
    the sim's ground truth at each observation's time (:class:`OraclePolicy`). Measures execution
    (strategies, rates, chunk lengths, latency) apart from learning. Never for a robot: it reads
    ``sim/objects`` from the sim world node ``sim``."""

    type: Literal["oracle"] = "oracle"
    task: Literal["reach", "pick"] = Field("reach", description="whose expert plans the chunks")
    sim: str = Field("sim", description="the sim world node whose sim/objects it reads")
    speed: float = Field(0.15, gt=0, description="the expert's TCP speed, m/s")
    horizon: int = Field(16, ge=1, le=1000, description="prediction horizon H (actions per chunk)")
    obs_horizon: int = Field(2, ge=1, description="observation horizon To")
    dt: float = Field(0.1, gt=0, description="action period, s")
    noise_std: float = Field(0.0, ge=0, description="Gaussian noise on each action's position, m")
    jitter_s: float = Field(0.0, ge=0, description="extra inference time, uniform in [0, jitter_s], s")
    seed: int = Field(0, description="RNG seed (noise, jitter)")

    def build(self, ctx, params) -> Policy:
        from robot_stack.drivers.sim_messages import ObjectState
        from robot_stack.tasks.registry import task_class

        sub = ctx.subscriber([self.sim], (ObjectState.TOPIC,), history=2000)

        def objects(t_ns: int):
            hist = sub.history(ObjectState.TOPIC)
            if not hist:
                return None
            return min(hist, key=lambda s: abs(int(s.stamp_ns) - t_ns))

        return OraclePolicy(
            task_class(self.task)(),
            objects,
            self.speed,
            self.horizon,
            self.obs_horizon,
            self.dt,
            self.noise_std,
            self.jitter_s,
            seed=self.seed,
        )
