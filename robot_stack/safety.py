"""Safety checks of the arm node (DESIGN.md, "Safety contract").

Nothing reaches a driver unless it passes: finite numbers; joint limits; workspace box; max jump
from the current state; max velocity and acceleration (segments stretched by the interpolator, and
every servo command rate-limited by :class:`ServoGuard`). A violation is clamped or refused as
configured, logged and counted in :class:`SafetyCounters`.
"""

from __future__ import annotations

import collections
import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)


class SafetyViolation(ValueError):
    """A schedule was refused; ``check`` names the failed check."""

    def __init__(self, check: str, reason: str):
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


class SafetyConfig(BaseModel):
    """Safety limits (units: rad, rad/s, rad/s^2, m, m/s, s).

    Attributes:
        joint_margin: keep this far inside the model's joint limits.
        workspace_min, workspace_max: TCP position box in the base frame.
        max_joint_vel, max_joint_acc: per-joint limits (scalar or one per joint).
        max_ee_vel, max_ee_ang_vel, max_ee_acc: TCP limits for Cartesian schedules.
        max_jump_joint: largest allowed distance (per joint) between the first waypoint of a
            schedule and the position the current plan has at that waypoint's time (the current
            command when there is no plan).
        max_jump_ee: same for the TCP position, m.
        on_limit: "clamp" (move violating waypoints onto the limit) or "refuse" (drop the schedule)
            for joint-limit and workspace violations. Non-finite values and jumps are always refused.
        heartbeat_timeout_s: hold if the schedule's sender is silent for longer than this.
    """

    model_config = ConfigDict(extra="forbid")
    joint_margin: float = Field(0.02, ge=0)
    workspace_min: tuple[float, float, float] = (0.15, -0.6, 0.005)
    workspace_max: tuple[float, float, float] = (0.85, 0.6, 0.8)
    max_joint_vel: float | list[float] = 1.5
    max_joint_acc: float | list[float] = 6.0
    max_ee_vel: float = Field(0.5, gt=0)
    max_ee_ang_vel: float = Field(1.5, gt=0)
    max_ee_acc: float = Field(3.0, gt=0)
    max_jump_joint: float = Field(0.35, gt=0)
    max_jump_ee: float = Field(0.08, gt=0)
    on_limit: Literal["clamp", "refuse"] = "refuse"
    heartbeat_timeout_s: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _box(self) -> "SafetyConfig":
        if any(a >= b for a, b in zip(self.workspace_min, self.workspace_max)):
            raise ValueError("workspace_min must be below workspace_max on every axis")
        return self


class SafetyCounters(collections.Counter):
    """Counts per check name ("non_finite", "joint_limit", "workspace", "jump", ...)."""

    def total(self) -> int:  # type: ignore[override]
        return int(sum(self.values()))


class ScheduleChecker:
    """Checks waypoint schedules before they enter the interpolator.

    Args:
        cfg: the limits.
        lower, upper: (n,) model joint limits, rad (the margin is applied inside them).
        fk: TCP pose function ``fk(q) -> (7,)``, to check joint schedules against the workspace.
    """

    def __init__(self, cfg: SafetyConfig, lower: np.ndarray, upper: np.ndarray, fk=None):
        self.cfg = cfg
        self.lower = np.asarray(lower) + cfg.joint_margin
        self.upper = np.asarray(upper) - cfg.joint_margin
        self.box_min = np.array(cfg.workspace_min)
        self.box_max = np.array(cfg.workspace_max)
        self.fk = fk
        self.counters = SafetyCounters()

    def _violation(self, check: str, reason: str) -> SafetyViolation:
        self.counters[check] += 1
        log.warning("safety: refused schedule (%s): %s", check, reason)
        return SafetyViolation(check, reason)

    def _finite(self, name: str, a: np.ndarray) -> None:
        if not np.all(np.isfinite(a)):
            raise self._violation("non_finite", f"{name} contains NaN or inf")

    def _clamped(self, check: str, reason: str) -> None:
        self.counters[f"{check}_clamped"] += 1
        log.warning("safety: clamped schedule (%s): %s", check, reason)

    def joint(self, q: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        """Check an (N, n) joint schedule; returns it (possibly clamped). Raises SafetyViolation."""
        q = np.array(q, dtype=np.float64)
        self._finite("joint waypoints", q)
        if q.shape[1] != len(self.lower):
            raise self._violation("shape", f"{q.shape[1]} joints given, arm has {len(self.lower)}")
        bad = (q < self.lower) | (q > self.upper)
        if bad.any():
            j = int(np.argwhere(bad)[0][1])
            reason = f"joint {j + 1} at {q[bad.any(1)][0, j]:.3f} rad outside [{self.lower[j]:.3f}, {self.upper[j]:.3f}]"
            if self.cfg.on_limit == "refuse":
                raise self._violation("joint_limit", reason)
            self._clamped("joint_limit", reason)
            q = np.clip(q, self.lower, self.upper)
        jump = np.abs(q[0] - q_now).max()
        if jump > self.cfg.max_jump_joint:
            raise self._violation("jump", f"first waypoint is {jump:.3f} rad from the current position "
                                          f"(max {self.cfg.max_jump_joint})")
        if self.fk is not None:
            pos = np.array([self.fk(qi)[:3] for qi in q])
            self._box(pos)
        return q

    def pose(self, poses: np.ndarray, ee_now: np.ndarray) -> np.ndarray:
        """Check an (N, 7) TCP pose schedule; returns it (possibly clamped). Raises SafetyViolation."""
        poses = np.array(poses, dtype=np.float64)
        self._finite("pose waypoints", poses)
        n = np.linalg.norm(poses[:, 3:], axis=1)
        if np.any(np.abs(n - 1) > 0.05):
            raise self._violation("quaternion", "pose quaternions must be unit length [qx qy qz qw]")
        poses[:, 3:] /= n[:, None]
        poses[:, :3] = self._box(poses[:, :3])
        jump = float(np.linalg.norm(poses[0, :3] - ee_now[:3]))
        if jump > self.cfg.max_jump_ee:
            raise self._violation("jump", f"first waypoint is {jump * 1e3:.0f} mm from the current TCP "
                                          f"(max {self.cfg.max_jump_ee * 1e3:.0f} mm)")
        return poses

    def _box(self, pos: np.ndarray) -> np.ndarray:
        out = (pos < self.box_min) | (pos > self.box_max)
        if out.any():
            p = pos[out.any(1)][0]
            reason = f"TCP {np.round(p, 3).tolist()} m outside the workspace box {self.box_min.tolist()}..{self.box_max.tolist()}"
            if self.cfg.on_limit == "refuse":
                raise self._violation("workspace", reason)
            self._clamped("workspace", reason)
            pos = np.clip(pos, self.box_min, self.box_max)
        return pos


class ServoGuard:
    """Last check before every driver command (servo rate).

    Holds the previous command on non-finite input, clamps to the joint limits, and rate-limits
    each joint to ``max_joint_vel`` (with a 20 % margin, so the interpolator's stretched segments
    pass untouched) — the guard against anything that slipped past the schedule checks.
    """

    def __init__(self, cfg: SafetyConfig, lower: np.ndarray, upper: np.ndarray, counters: SafetyCounters):
        self.lower = np.asarray(lower) + cfg.joint_margin
        self.upper = np.asarray(upper) - cfg.joint_margin
        self.vmax = np.asarray(cfg.max_joint_vel, dtype=float) * 1.2
        self.counters = counters

    def filter(self, q_des: np.ndarray, q_prev: np.ndarray, dt: float) -> np.ndarray:
        """Safe command for this servo tick (rad), given the previous command and period dt (s)."""
        if not np.all(np.isfinite(q_des)):
            self.counters["servo_non_finite"] += 1
            return q_prev.copy()
        q = np.clip(q_des, self.lower, self.upper)
        if not np.array_equal(q, q_des):
            self.counters["servo_joint_limit"] += 1
        step = self.vmax * dt
        dq = np.clip(q - q_prev, -step, step)
        if not np.allclose(dq, q - q_prev):
            self.counters["servo_velocity"] += 1
        return q_prev + dq
