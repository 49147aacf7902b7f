"""Safety checks of the arm node (docs/design.md, "Safety contract").

Nothing reaches a driver unless it passes: schedule sanity (not empty, not too long, not too far
ahead, right dimensions, gripper targets finite and in range); finite numbers; joint limits;
workspace box; max jump from the current plan (position and orientation); and, on every servo
command, velocity, acceleration and jerk limits (:class:`ServoGuard`, holds and stops included).
A violation is clamped or refused as configured, logged and counted in :class:`SafetyCounters`.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import collections
import logging
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)


class SafetyViolation(RobotStackError, ValueError):
    """A schedule was refused; ``check`` names the failed check."""

    def __init__(self, check: str, reason: str):
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


class SafetyConfig(BaseModel):
    """Safety limits (units: rad, rad/s, rad/s^2, rad/s^3, m, m/s, s).

    Attributes:
        joint_margin: keep this far inside the model's joint limits.
        workspace_min, workspace_max: TCP position box in the base frame.
        max_joint_vel, max_joint_acc, max_joint_jerk: per-joint limits (scalar or one per joint),
            held by every command the driver receives (the servo guard, :class:`ServoGuard`).
        max_ee_vel, max_ee_ang_vel, max_ee_acc: TCP limits for Cartesian schedules.
        max_jump_joint: largest allowed distance (per joint) between the first waypoint of a
            schedule and the position the current plan has at that waypoint's time (the current
            command when there is no plan).
        max_jump_ee: same for the TCP position, m.
        max_jump_ee_rad: same for the TCP orientation (rotation angle), rad.
        max_waypoints: longest schedule accepted (longer ones are refused before any other check,
            so checking never stalls the servo loop).
        max_ahead_s: the last waypoint may lie at most this far after "now", s.
        on_limit: "clamp" (move violating waypoints onto the limit) or "refuse" (drop the schedule)
            for joint-limit and workspace violations. Non-finite values and jumps are always refused.
        heartbeat_timeout_s: hold if the schedule's sender is silent for longer than this.
        estop_release: node names (message sources) allowed to release an e-stop; None: the CLI
            (``cli_estop``) and the setup's teleop nodes.
    """

    model_config = ConfigDict(extra="forbid")
    joint_margin: float = Field(0.02, ge=0)
    workspace_min: tuple[float, float, float] = Field(
        (0.15, -0.6, 0.005), description="TCP workspace box, lower corner [x y z] in the base frame, m"
    )
    workspace_max: tuple[float, float, float] = Field(
        (0.85, 0.6, 0.8), description="TCP workspace box, upper corner [x y z] in the base frame, m"
    )
    max_joint_vel: float | list[float] = Field(
        1.5,
        description="joint velocity limit, rad/s (one value or one per joint; capped at the robot's datasheet values)",
    )
    max_joint_acc: float | list[float] = Field(
        6.0, description="joint acceleration limit, rad/s^2 (one value or one per joint)"
    )
    max_joint_jerk: float | list[float] = Field(
        150.0, description="joint jerk limit of the servo guard, rad/s^3 (one value or one per joint)"
    )
    max_ee_vel: float = Field(0.5, gt=0, description="TCP speed limit of Cartesian schedules, m/s")
    max_ee_ang_vel: float = Field(1.5, gt=0, description="TCP angular speed limit of Cartesian schedules, rad/s")
    max_ee_acc: float = Field(3.0, gt=0, description="TCP acceleration limit of Cartesian schedules, m/s^2")
    max_jump_joint: float = Field(0.35, gt=0)
    max_jump_ee: float = Field(0.08, gt=0)
    max_jump_ee_rad: float = Field(0.5, gt=0)
    max_waypoints: int = Field(1024, ge=1)
    max_ahead_s: float = Field(30.0, gt=0)
    on_limit: Literal["clamp", "refuse"] = "refuse"
    heartbeat_timeout_s: float = Field(0.5, gt=0)
    estop_release: list[str] | None = None

    @model_validator(mode="after")
    def _box(self) -> SafetyConfig:
        if any(a >= b for a, b in zip(self.workspace_min, self.workspace_max)):
            raise ValueError("workspace_min must be below workspace_max on every axis")
        for k in ("max_joint_vel", "max_joint_acc", "max_joint_jerk"):
            v = np.asarray(getattr(self, k), float)
            if not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f"{k} must be > 0 (every joint)")
        return self

    def over(self, defaults: dict) -> SafetyConfig:
        """These limits over a robot description's defaults (its ``safety`` block): each field the
        setup wrote wins, each field it left out takes the description's value, else this model's
        default.

        Raises:
            pydantic.ValidationError: the combination is invalid (such as an empty workspace box).
        """
        return SafetyConfig.model_validate({**defaults, **self.model_dump(include=self.model_fields_set)})

    def capped_by(self, max_vel: np.ndarray, max_acc: np.ndarray, robot: str = "robot") -> SafetyConfig:
        """A copy whose per-joint velocity and acceleration limits are at most the robot model's
        (datasheet) limits, (n,) rad/s and rad/s^2; a config that asked for more is logged.

        Raises:
            ValueError: a per-joint limit list of the wrong length.
        """
        n = len(max_vel)
        vel = self.per_joint("max_joint_vel", n)
        acc = self.per_joint("max_joint_acc", n)
        if np.any(vel > max_vel) or np.any(acc > max_acc):
            log.warning(
                "safety limits above %s's datasheet limits are capped to them (vel %s, acc %s)",
                robot,
                np.round(max_vel, 2).tolist(),
                np.round(max_acc, 2).tolist(),
            )
        return self.model_copy(
            update={
                "max_joint_vel": np.minimum(vel, max_vel).tolist(),
                "max_joint_acc": np.minimum(acc, max_acc).tolist(),
            }
        )

    def per_joint(self, key: str, n: int) -> np.ndarray:
        """Limit ``key`` (e.g. "max_joint_vel") as an (n,) array. Raises ValueError on a wrong length."""
        v = np.asarray(getattr(self, key), float)
        if v.ndim == 0:
            return np.full(n, float(v))
        if v.shape != (n,):
            raise ValueError(f"safety.{key} has {v.size} values, the arm has {n} joints")
        return v.copy()


class SafetyCounters(collections.Counter):
    """Counts per check name ("non_finite", "joint_limit", "workspace", "jump", ...)."""

    def total(self) -> int:  # type: ignore[override]
        return int(sum(self.values()))


class ScheduleChecker:
    """Checks waypoint schedules before they enter the interpolator.

    The checks are split so that the servo loop never stalls on one schedule: :meth:`admit` and
    the ``*_static`` checks are vectorised (microseconds for ``max_waypoints`` waypoints);
    the workspace check of a joint schedule needs one forward kinematics per waypoint and runs in
    slices under a time budget (:meth:`joint_workspace`); the jump checks run last, against the
    plan as it is when the schedule takes over. :meth:`joint` and :meth:`pose` run all of it at
    once (for callers without a servo loop).

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

    # ------------------------------------------------------------------ whole-schedule checks
    def admit(
        self, stamps_ns: np.ndarray, positions: np.ndarray, space: str, gripper: np.ndarray | None, now_ns: int
    ) -> None:
        """Checks that need no model: size, dimensions, timing, gripper targets.

        Args:
            stamps_ns: (N,) int64 waypoint times, ns; positions: (N, D); space: "joint" or "ee";
            gripper: (N,) opening targets in [0, 1] or None; now_ns: the servo loop's time.
        Raises:
            SafetyViolation: "empty", "too_long", "shape", "too_far_ahead", "gripper".
        """
        n = len(stamps_ns)
        if n == 0:
            raise self._violation("empty", "schedule has no waypoints")
        if n > self.cfg.max_waypoints:
            raise self._violation("too_long", f"{n} waypoints (max {self.cfg.max_waypoints})")
        positions = np.asarray(positions)
        dim = len(self.lower) if space == "joint" else 7
        if positions.ndim != 2 or positions.shape != (n, dim):
            raise self._violation("shape", f"{space} waypoints of shape {positions.shape}, expected ({n}, {dim})")
        ahead = (int(stamps_ns[-1]) - now_ns) / 1e9
        if ahead > self.cfg.max_ahead_s:
            raise self._violation("too_far_ahead", f"last waypoint {ahead:.1f} s ahead (max {self.cfg.max_ahead_s} s)")
        if gripper is not None:
            g = np.asarray(gripper, float)
            if g.shape != (n,):
                raise self._violation("shape", f"{g.shape} gripper targets for {n} waypoints")
            if not np.all(np.isfinite(g)):
                raise self._violation("gripper", "gripper targets contain NaN or inf")
            if g.min() < -1e-6 or g.max() > 1 + 1e-6:
                raise self._violation("gripper", f"gripper targets in [{g.min():.3f}, {g.max():.3f}], outside [0, 1]")

    # ------------------------------------------------------------------ joint schedules
    def joint_static(self, q: np.ndarray) -> np.ndarray:
        """Finite values, joint count and joint limits of an (N, n) schedule; returns it (maybe clamped)."""
        q = np.array(q, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != len(self.lower):
            raise self._violation("shape", f"joint waypoints of shape {q.shape}, arm has {len(self.lower)} joints")
        self._finite("joint waypoints", q)
        bad = (q < self.lower) | (q > self.upper)
        if bad.any():
            j = int(np.argwhere(bad)[0][1])
            reason = (
                f"joint {j + 1} at {q[bad.any(1)][0, j]:.3f} rad outside [{self.lower[j]:.3f}, {self.upper[j]:.3f}]"
            )
            if self.cfg.on_limit == "refuse":
                raise self._violation("joint_limit", reason)
            self._clamped("joint_limit", reason)
            q = np.clip(q, self.lower, self.upper)
        return q

    def joint_workspace(self, q: np.ndarray, start: int = 0, budget_s: float = float("inf")) -> int:
        """Workspace box check of waypoints ``start..`` by forward kinematics, until ``budget_s``
        is spent; returns the index to resume from (``len(q)`` when done). Joint schedules are
        refused (not clamped) when they leave the box: clamping a TCP needs IK."""
        if self.fk is None:
            return len(q)
        deadline = time.perf_counter() + budget_s
        i = start
        while i < len(q):
            p = np.asarray(self.fk(q[i])[:3])
            if np.any(p < self.box_min) or np.any(p > self.box_max):
                raise self._violation(
                    "workspace",
                    f"waypoint {i}: TCP {np.round(p, 3).tolist()} m outside the "
                    f"workspace box {self.box_min.tolist()}..{self.box_max.tolist()}",
                )
            i += 1
            if time.perf_counter() > deadline:
                break
        return i

    def joint_jump(self, q0: np.ndarray, q_ref: np.ndarray) -> None:
        """First waypoint vs where the plan is at that time (rad, max over joints)."""
        jump = float(np.abs(np.asarray(q0) - q_ref).max())
        if jump > self.cfg.max_jump_joint:
            raise self._violation(
                "jump", f"first waypoint is {jump:.3f} rad from the current position (max {self.cfg.max_jump_joint})"
            )

    def joint(self, q: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        """Check an (N, n) joint schedule at once; returns it (possibly clamped). Raises SafetyViolation."""
        q = self.joint_static(q)
        if len(q) == 0:
            raise self._violation("empty", "schedule has no waypoints")
        self.joint_jump(q[0], q_now)
        self.joint_workspace(q)
        return q

    # ------------------------------------------------------------------ pose schedules
    def pose_static(self, poses: np.ndarray) -> np.ndarray:
        """Finite values, unit quaternions and the workspace box of an (N, 7) schedule."""
        poses = np.array(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != 7:
            raise self._violation("shape", f"pose waypoints of shape {poses.shape}, expected (N, 7)")
        self._finite("pose waypoints", poses)
        n = np.linalg.norm(poses[:, 3:], axis=1)
        if np.any(np.abs(n - 1) > 0.05):
            raise self._violation("quaternion", "pose quaternions must be unit length [qx qy qz qw]")
        poses[:, 3:] /= n[:, None]
        poses[:, :3] = self._box(poses[:, :3])
        return poses

    def pose_jump(self, p0: np.ndarray, ref: np.ndarray) -> None:
        """First waypoint vs the plan's pose at that time: translation (m) and rotation angle (rad)."""
        jump = float(np.linalg.norm(p0[:3] - ref[:3]))
        if jump > self.cfg.max_jump_ee:
            raise self._violation(
                "jump",
                f"first waypoint is {jump * 1e3:.0f} mm from the current TCP (max {self.cfg.max_jump_ee * 1e3:.0f} mm)",
            )
        # angle between unit quaternions: 2 acos |<a, b>| (sign-invariant: q and -q are one rotation)
        d = abs(float(np.dot(p0[3:] / np.linalg.norm(p0[3:]), ref[3:] / np.linalg.norm(ref[3:]))))
        ang = 2.0 * float(np.arccos(min(1.0, d)))
        if ang > self.cfg.max_jump_ee_rad:
            raise self._violation(
                "jump",
                f"first waypoint is rotated {np.degrees(ang):.0f} deg from the current "
                f"TCP (max {np.degrees(self.cfg.max_jump_ee_rad):.0f} deg)",
            )

    def pose(self, poses: np.ndarray, ee_now: np.ndarray) -> np.ndarray:
        """Check an (N, 7) TCP pose schedule at once; returns it (possibly clamped). Raises SafetyViolation."""
        poses = self.pose_static(poses)
        if len(poses) == 0:
            raise self._violation("empty", "schedule has no waypoints")
        self.pose_jump(poses[0], np.asarray(ee_now, float))
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
    """Last stage before every driver command (servo rate): joint limits, and velocity,
    acceleration and jerk limits on every command, holds and stops included.

    The guard keeps the commanded state (position, velocity, acceleration) and moves it each tick
    along a jerk-limited, time-optimal profile computed by Ruckig (Berscheid & Kroeger, "Jerk-limited
    Real-time Trajectory Generation with Arbitrary Target States", RSS 2021; ``ruckig`` on PyPI):

    - :meth:`track`: toward the desired position of this tick with its velocity as feed-forward
      (the interpolator's schedule, already stretched to the limits, passes through unchanged up
      to a small lag; anything faster — a jump, an IK flip — is smoothed, and counted);
    - :meth:`stop`: brake to zero velocity along a jerk-limited profile and hold where it ends
      (holds, schedule drops, stale heartbeats, e-stop).

    Non-finite desired positions are counted and turned into a stop. Limits per joint come from
    :class:`SafetyConfig` (``max_joint_vel/acc/jerk``).

    Args:
        cfg: the limits; lower, upper: (n,) model joint limits, rad; counters: where to count.
        q0: (n,) start position, rad (the measured state: the arm never jumps at start-up).
    """

    #: deviation from the desired position above which a tick counts as limited, rad
    LIMITED_TOL = 2e-3
    #: distance to the target above which the guard is smoothing a step (phase-synchronised), rad
    STEP_TOL = 2e-3

    def __init__(
        self,
        cfg: SafetyConfig,
        lower: np.ndarray,
        upper: np.ndarray,
        counters: SafetyCounters,
        q0: np.ndarray | None = None,
    ):
        from ruckig import ControlInterface, InputParameter, OutputParameter, Result, Ruckig, Synchronization

        self._ruckig = (ControlInterface, Synchronization, Result)  # looked up once, not per servo tick

        self.lower = np.asarray(lower, float) + cfg.joint_margin
        self.upper = np.asarray(upper, float) - cfg.joint_margin
        n = len(self.lower)
        self.n = n
        self.vmax = cfg.per_joint("max_joint_vel", n)
        self.amax = cfg.per_joint("max_joint_acc", n)
        self.jmax = cfg.per_joint("max_joint_jerk", n)
        self.counters = counters
        self._otg = Ruckig(n, 0.002)
        self._inp = InputParameter(n)
        self._out = OutputParameter(n)
        self._inp.max_velocity = self.vmax.tolist()
        self._inp.max_acceleration = self.amax.tolist()
        self._inp.max_jerk = self.jmax.tolist()
        self.q = np.zeros(n) if q0 is None else np.asarray(q0, float).copy()
        self.v = np.zeros(n)
        self.a = np.zeros(n)
        self._prev_des: np.ndarray | None = None
        self._brake_otg = None  # (Ruckig, InputParameter, Trajectory) of brake_point

    def reset(self, q: np.ndarray) -> None:
        """Restart at rest at ``q`` (rad): start-up, or after the robot itself stopped (driver fault)."""
        self.q = np.asarray(q, float).copy()
        self.v[:] = 0.0
        self.a[:] = 0.0
        self._prev_des = None

    def _run(self, dt: float, target_q: np.ndarray | None, target_v: np.ndarray) -> np.ndarray:
        """Advance the commanded state by ``dt`` toward a target moving at constant velocity
        ``target_v`` that is at ``target_q`` at the end of this tick (None: brake to rest).

        Tracking is planned in the target's moving frame: the relative state must reach zero, with
        the same acceleration and jerk limits and the velocity limits shifted by ``target_v``
        (Ruckig's ``min_velocity``/``max_velocity``). A target that really moves at constant
        velocity is then followed without lag, and every limit still holds in the base frame.

        When the guard has to smooth a step (the target more than ``STEP_TOL`` away: a chunk
        switch, a jump) the joints are phase-synchronised (Ruckig's ``Synchronization.Phase``):
        the lag of every joint stays proportional to its share of the step, so the TCP stays near
        the commanded path instead of each joint finishing on its own (which bent a straight TCP
        line by 3-13 mm at async chunk switches under load). Fine tracking stays unsynchronised:
        synchronising every tick made each joint wait for the slowest and cost accuracy where
        the arm must be still (eye-to-hand calibration 3.6 mm against 2.1 mm). Phase
        synchronisation is numerically fragile for near-degenerate states, so
        every plan is checked: a refused input, an error result or a non-finite output falls back
        to unsynchronised tracking, then to a jerk-limited stop, then to braking at the
        acceleration limit (each counted as ``servo_plan_error``). A target already reached
        (relative state below 1e-9) is held exactly without planning."""
        ControlInterface, Synchronization, _ = self._ruckig

        if target_q is not None:
            rel_q = self.q - (target_q - target_v * dt)
            rel_v = self.v - target_v
            if max(np.abs(rel_q).max(), np.abs(rel_v).max(), np.abs(self.a).max()) < 1e-9:
                self.q, self.v, self.a = target_q.copy(), np.asarray(target_v, float).copy(), np.zeros(self.n)
                return self.q.copy()
            # a step to smooth (a jump, a chunk switch): joints in concert; fine tracking: each its own
            syncs = (
                (Synchronization.Phase, Synchronization.No)
                if np.abs(rel_q).max() > self.STEP_TOL
                else (Synchronization.No,)
            )
            for sync in syncs:
                if self._plan(
                    dt,
                    ControlInterface.Position,
                    sync,
                    rel_q,
                    rel_v,
                    self.vmax - target_v,
                    -self.vmax - target_v,
                    target_q,
                    target_v,
                ):
                    return self.q.copy()
        for sync in (Synchronization.Phase, Synchronization.No):  # brake along the current direction
            if self._plan(dt, ControlInterface.Velocity, sync, self.q, self.v, self.vmax, -self.vmax, 0.0, 0.0):
                return self.q.copy()
        return self._brake(dt)

    def _plan(self, dt: float, interface, sync, cur_q, cur_v, v_hi, v_lo, base_q, base_v) -> bool:
        """One Ruckig update; adopts its output and returns True only if it is valid and finite."""
        from ruckig import RuckigError

        Result = self._ruckig[2]

        inp, out = self._inp, self._out
        self._otg.delta_time = dt
        inp.control_interface = interface
        inp.synchronization = sync
        inp.current_position = np.asarray(cur_q, float).tolist()
        inp.current_velocity = np.asarray(cur_v, float).tolist()
        inp.current_acceleration = self.a.tolist()
        inp.target_position = [0.0] * self.n
        inp.target_velocity = [0.0] * self.n
        inp.target_acceleration = [0.0] * self.n
        inp.max_velocity = np.asarray(v_hi, float).tolist()
        inp.min_velocity = np.asarray(v_lo, float).tolist()
        try:
            res = self._otg.update(inp, out)
            why = str(res)
        except RuckigError as e:  # an input Ruckig refuses: never let it end the servo loop
            res, why = None, " ".join(str(e).split())[:200]
        q = np.array(out.new_position) + base_q
        v = np.array(out.new_velocity) + base_v
        a = np.array(out.new_acceleration)
        ok = res in (Result.Working, Result.Finished)
        if ok and not (np.all(np.isfinite(q)) and np.all(np.isfinite(v)) and np.all(np.isfinite(a))):
            ok, why = False, "non-finite output"
        if not ok:
            n = self.counters["servo_plan_error"] = self.counters["servo_plan_error"] + 1
            if n <= 5 or n % 1000 == 0:
                log.warning(
                    "servo guard: ruckig plan refused (%s, %s: %s); falling back (#%d)", interface, sync, why, n
                )
            return False
        # the state stays inside the limits exactly (a profile that touches a limit can land a
        # rounding error outside it, which Ruckig's input check would refuse on the next tick)
        self.q = q
        self.v = np.clip(v, -self.vmax, self.vmax)
        self.a = np.clip(a, -self.amax, self.amax)
        return True

    def _brake(self, dt: float) -> np.ndarray:
        """Last resort if Ruckig cannot plan a stop: velocity toward zero at the acceleration
        limit (jerk unbounded for this tick), position integrated, joint limits held."""
        dv = np.clip(-self.v, -self.amax * dt, self.amax * dt)
        self.a = dv / dt
        v_new = self.v + dv
        self.q = np.clip(self.q + 0.5 * (self.v + v_new) * dt, self.lower, self.upper)
        self.v = v_new
        return self.q.copy()

    def track(self, q_des: np.ndarray, dt: float) -> np.ndarray:
        """Command for this tick toward ``q_des`` (rad) after ``dt`` (s) since the last one."""
        if not np.all(np.isfinite(q_des)):
            self.counters["servo_non_finite"] += 1
            return self.stop(dt)
        q = np.clip(q_des, self.lower, self.upper)
        if not np.array_equal(q, q_des):
            self.counters["servo_joint_limit"] += 1
        v_max_ff = 0.98 * self.vmax  # keep the shifted velocity window open on both sides
        v_ff = np.zeros(self.n) if self._prev_des is None else np.clip((q - self._prev_des) / dt, -v_max_ff, v_max_ff)
        self._prev_des = q
        out = self._run(dt, q, v_ff)
        if np.max(np.abs(out - q)) > self.LIMITED_TOL:
            self.counters["servo_limited"] += 1
        return out

    def stop(self, dt: float) -> np.ndarray:
        """Command for this tick of a jerk-limited stop (then: hold where the stop ended)."""
        self._prev_des = None
        if not self.moving:  # at rest: hold exactly where the stop ended
            self.v[:] = 0.0
            self.a[:] = 0.0
            return self.q.copy()
        return self._run(dt, None, np.zeros(self.n))

    @property
    def moving(self) -> bool:
        """The commanded state still has velocity or acceleration (beyond 1e-9)."""
        return bool(np.any(np.abs(self.v) > 1e-9) or np.any(np.abs(self.a) > 1e-9))

    def brake_point(self) -> np.ndarray:
        """(n,) rad: where the commanded state would come to rest if a stop began now: the end of
        the jerk-limited profile to zero velocity and acceleration from (q, v, a) that :meth:`stop`
        follows (Ruckig's velocity interface, phase-synchronised, else unsynchronised), within the
        joint limits; the commanded joints when at rest. A servo-rate collision check of this
        configuration cannot be outrun: a stop begun at any tick ends at the brake point checked on
        the tick before (Ruckig: Berscheid & Kroeger, "Jerk-limited Real-time Trajectory
        Generation with Arbitrary Target States", RSS 2021)."""
        if not self.moving:
            return self.q.copy()
        if self._brake_otg is None:  # offline calculation (whole profile): built on first use
            from ruckig import InputParameter, Ruckig, Trajectory

            self._brake_otg = (Ruckig(self.n), InputParameter(self.n), Trajectory(self.n))
            inp = self._brake_otg[1]
            inp.max_velocity, inp.max_acceleration = self.vmax.tolist(), self.amax.tolist()
            inp.max_jerk = self.jmax.tolist()
        ControlInterface, Synchronization, Result = self._ruckig
        otg, inp, traj = self._brake_otg
        inp.control_interface = ControlInterface.Velocity
        inp.current_position, inp.current_velocity = self.q.tolist(), self.v.tolist()
        inp.current_acceleration = self.a.tolist()
        inp.target_velocity = inp.target_acceleration = [0.0] * self.n
        for sync in (Synchronization.Phase, Synchronization.No):
            inp.synchronization = sync
            try:
                ok = otg.calculate(inp, traj) in (Result.Working, Result.Finished)
            except Exception:  # an input Ruckig refuses (RuckigError): try the next, then the bound
                ok = False
            if ok:
                q_end = np.array(traj.at_time(traj.duration)[0])
                if np.all(np.isfinite(q_end)):
                    return np.clip(q_end, self.lower, self.upper)
        # estimate without Ruckig: the acceleration ramped to zero at the jerk limit, then a brake at
        # the acceleration limit (per joint; the jerk of the brake itself neglected)
        v, a = self.v, self.a
        t_ramp = np.abs(a) / self.jmax
        v1 = v + a * t_ramp / 2  # velocity once the acceleration is back to zero
        dq = v * t_ramp + a * t_ramp**2 / 3 + v1 * np.abs(v1) / (2 * self.amax)
        return np.clip(self.q + dq, self.lower, self.upper)

    def save(self) -> tuple:
        """The commanded state (q, v, a and the last desired position), for :meth:`restore`."""
        return self.q.copy(), self.v.copy(), self.a.copy(), None if self._prev_des is None else self._prev_des.copy()

    def restore(self, state: tuple) -> None:
        """Go back to a state from :meth:`save` (a tick's command withdrawn before it was sent)."""
        self.q, self.v, self.a, self._prev_des = (None if x is None else x.copy() for x in state)
