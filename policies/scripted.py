"""Scripted chunking policies for tests, benchmarks and bring-up (no learning involved).

:class:`GoToPolicy` moves the TCP in a straight line toward a goal at constant speed: from the
newest observed TCP pose p(t_obs), action i is the pose at t_obs + (i + offset) dt. Executed
through any strategy it must reach the goal on a straight path, which makes timing mistakes
(stale actions, jumps at chunk switches) measurable. (The policy node's ``delay_s`` injects
inference time for every backend.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.devices import DeviceConfig

from robot_stack.control.features import ACTION_NAMES
from .base import Policy, PolicyMetadata, followed_prefix


class GoToPolicy(Policy):
    """Straight-line TCP motion toward ``goal`` (3,) m at ``speed`` m/s, through ``via`` (3,) first
    when given (the sim reach task's expert as a chunking policy: above the cube, then down); the
    orientation first observed is held. Stateless: the via point is skipped once the TCP is inside
    a funnel over it (5 mm radius at its height, widening 0.5 m per m below).

    Actions are [x y z qx qy qz qw gripper] (absolute TCP pose in the base frame, gripper open
    fraction). With a committed prefix (RTC) the chunk starts with the prefix and continues from
    its last action (hard inpainting, the limit of RTC's soft mask with full guidance).
    """

    def __init__(
        self,
        goal,
        speed: float = 0.05,
        horizon: int = 16,
        obs_horizon: int = 2,
        dt: float = 0.1,
        offset: int = 0,
        via=None,
    ):
        self.goal = np.asarray(goal, float)
        self.via = None if via is None else np.asarray(via, float)  # visited first (e.g. above a cube)
        self.speed = speed
        self._orientation: np.ndarray | None = None  # held: the orientation first observed
        self.metadata = PolicyMetadata(
            obs_shapes={"ee_pose": ((7,), "<f4")},
            obs_horizon=obs_horizon,
            horizon=horizon,
            action_dim=8,
            action_space="ee_pose+gripper",
            dt=dt,
            offset=offset,
            supports_prefix=True,
            action_names=ACTION_NAMES,
        )

    def _advance(self, p: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
        """Points ``speed * dt * n`` along the path from ``p`` (through ``via`` if not yet reached)."""
        # stateless: until the TCP is over the via point it goes there first. "Over" is a funnel:
        # 5 mm horizontally at the via height, widening by 0.5 m per m below it. A fixed 5 mm
        # limit-cycled under async execution: a few mm of tracking error during the descent sent
        # the next chunk back up to the via point, whose jump made more tracking error (CI, async)
        use_via = self.via is not None and (
            np.linalg.norm((self.via - p)[:2]) > 0.005 + 0.5 * max(0.0, float(self.via[2] - p[2]))
        )
        pts = [p] + ([self.via] if use_via else []) + [self.goal]
        seg = np.array([np.linalg.norm(b - a) for a, b in zip(pts[:-1], pts[1:])])
        cum = np.r_[0.0, np.cumsum(seg)]
        s = np.minimum(self.speed * self.metadata.dt * n_steps, cum[-1])
        out = np.empty((len(s), 3))
        for k, sk in enumerate(s):
            i = min(int(np.searchsorted(cum, sk, side="right")) - 1, len(seg) - 1)
            f = 0.0 if seg[i] < 1e-12 else (sk - cum[i]) / seg[i]
            out[k] = pts[i] + f * (pts[i + 1] - pts[i])
        return out

    def predict(self, obs, committed_prefix=None, frozen=None):
        m = self.metadata
        ee = np.asarray(obs["ee_pose"][-1], float)
        if self._orientation is None:
            self._orientation = ee[3:] / np.linalg.norm(ee[3:])
        out = np.empty((m.horizon, 8), np.float32)
        out[:, 3:7] = self._orientation
        out[:, 7] = 1.0
        d = followed_prefix(committed_prefix, frozen, m.horizon)
        self.last_frozen = d if committed_prefix is not None else -1
        if d:
            out[:d] = committed_prefix[:d]
            start, k0 = np.asarray(committed_prefix[d - 1, :3], float), 1
            out[d:, :3] = self._advance(start, np.arange(k0, m.horizon - d + k0))
        else:
            out[:, :3] = self._advance(ee[:3], np.arange(m.horizon) + m.offset)
        return out


class MultiArmGoTo(Policy):
    """:class:`GoToPolicy` for several arms driven in lockstep: arm i goes to ``goals[i]`` (3,) m
    in its own base frame. Observation ``ee_pose`` (To, 7 N) and actions (H, 8 N) are the arms'
    blocks in order (the controller's layout for ``arms``); each block is one GoToPolicy's."""

    def __init__(
        self, goals, speed: float = 0.05, horizon: int = 16, obs_horizon: int = 2, dt: float = 0.1, offset: int = 0
    ):
        self.arms = [GoToPolicy(g, speed, horizon, obs_horizon, dt, offset) for g in goals]
        n = len(self.arms)
        self.metadata = PolicyMetadata(
            obs_shapes={"ee_pose": ((7 * n,), "<f4")},
            obs_horizon=obs_horizon,
            horizon=horizon,
            action_dim=8 * n,
            action_space="ee_pose+gripper",
            dt=dt,
            offset=offset,
            supports_prefix=True,
        )

    def predict(self, obs, committed_prefix=None, frozen=None):
        ee = np.asarray(obs["ee_pose"])
        out = [
            p.predict(
                {"ee_pose": ee[:, 7 * i : 7 * i + 7]},
                None if committed_prefix is None else np.asarray(committed_prefix)[:, 8 * i : 8 * i + 8],
                frozen,
            )
            for i, p in enumerate(self.arms)
        ]
        self.last_frozen = self.arms[0].last_frozen
        return np.concatenate(out, axis=1)


class GoToConfig(DeviceConfig):
    """Policy backend ``goto``: the scripted :class:`GoToPolicy` (tests, benchmarks, bring-up).

    Keys: ``goal`` (3,) m and optional ``via`` (3,) m in the base frame, ``speed`` m/s, ``horizon`` H,
    ``obs_horizon`` To, ``dt`` s (the chunk's action period).
    """

    type: Literal["goto"] = "goto"
    goal: tuple[float, float, float] = Field(
        (0.45, 0.15, 0.30), description="the TCP goal [x y z] in the base frame, m"
    )
    via: tuple[float, float, float] | None = Field(None, description="waypoint visited before the goal")
    speed: float = Field(0.05, gt=0, description="TCP speed, m/s")
    horizon: int = Field(16, ge=1, description="prediction horizon H (actions per chunk)")
    obs_horizon: int = Field(2, ge=1, description="observation horizon To")
    dt: float = Field(0.1, gt=0, description="action period, s")
    goals: list[tuple[float, float, float]] | None = Field(
        None,
        min_length=1,
        description="several arms in lockstep: one goal per arm (its base frame, m), in the "
        "controller's arm order (MultiArmGoTo); replaces goal",
    )

    def build(self, ctx, params) -> Policy:
        if self.goals is not None:
            if self.via is not None:
                raise ValueError("goto: via is for one arm (goal), not with goals")
            return MultiArmGoTo(self.goals, self.speed, self.horizon, self.obs_horizon, self.dt)
        return GoToPolicy(self.goal, self.speed, self.horizon, self.obs_horizon, self.dt, via=self.via)
