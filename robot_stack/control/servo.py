"""The arm node's servo state machine as a pure core: no sockets, no driver, time passed in.

:class:`ServoCore` takes the arm node's inputs as events (a heartbeat, a waypoint schedule, an
arm-control message, a driver reading or fault) with the time they are handled at, and each servo
tick returns the joint command for the driver. It owns:

- the modes ``hold`` (no trajectory, or at its end), ``track`` (following the merged schedule),
  ``estop`` (e-stop, or a driver fault: jerk-limited stop, then hold);
- the schedule pipeline: admission checks at once, the joint-space workspace scan in slices under
  a time budget per tick, then the merge at "now" into the trajectory (docs/design.md, "Action
  chunks and receding-horizon execution": the old plan's tail is replaced from now), with the jump
  check against where the current plan is when the new one takes over;
- heartbeat staleness of the schedule's sender (``heartbeat_timeout_s``: schedule dropped, stop);
- e-stop and its release sources (only sources in ``safety.estop_release`` release an e-stop or
  ask for a driver recovery);
- the servo guard (:class:`~robot_stack.control.safety.ServoGuard`): joint limits and velocity,
  acceleration and jerk limits on every command, holds and stops included;
- collision checks (with a :class:`~robot_stack.control.collision.CollisionChecker`): a joint
  schedule whose interpolated path comes closer to the scene or to the arm itself than the
  clearance is refused by name (``collision``), in slices like the workspace scan; at servo rate
  every tick's command is checked with the stop that could follow it (each pair's distance less
  how far its geoms can move until the brake point, where a jerk-limited stop begun after the
  command would end: :meth:`~robot_stack.control.safety.ServoGuard.brake_point`): closer than the
  clearance withdraws the command, stops the arm from the last one (whose braking was checked
  clear) and drops the schedule (``collision_stop``), and while a moving plan is within the slow-down
  distance the schedule's clock runs slower in proportion to the margin (MoveIt Servo's collision
  velocity scaling, applied as time scaling so that the path stays the commanded one; a held
  target adds no lag, and a plan slowed by :attr:`ServoCore.MAX_LAG_NS` in all is stopped like one
  at the clearance), then catches up at :attr:`ServoCore.CATCH_UP` once free.

Every refusal is counted in :attr:`ServoCore.counters` (the ``safety.*`` metrics) and logged with
its reason. The node (``robot_stack.nodes.arm``) reads the driver, feeds the events, sends the
command and publishes the state.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass

import numpy as np

from robot_stack.comm.messages import ArmControl, Heartbeat, Message, WaypointSchedule
from robot_stack.control.interpolation import Limits, Trajectory
from robot_stack.control.safety import SafetyConfig, SafetyViolation, ScheduleChecker, ServoGuard

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A schedule whose static checks passed; its workspace scan may still run (joint space)."""

    msg: WaypointSchedule
    points: np.ndarray
    scanned: int
    collision_scanned: int = 0


class ServoCore:
    """Servo state machine of one arm (see the module docstring).

    Args:
        kin: the arm's kinematics (``fk(q) -> (7,) pose``, ``ik(pose, seed, iters, raise_on_fail)``).
        safety: the arm's safety limits (already capped by the robot model's).
        lower, upper: (n,) joint limits, rad.
        q0: (n,) measured joint positions at start-up, rad: the first command (no jump).
        grip0: measured gripper opening at start-up in [0, 1].
        rate_hz: servo rate (the nominal tick for the first command), Hz.
        release_sources: sender names allowed to release an e-stop or request a recovery.
        check_budget_s: time a tick may spend on joint-space workspace scans, s.
        max_pending: schedules waiting for their checks beyond which new ones are refused.
        ik_iters: IK iterations per tick for Cartesian schedules.
        collision: collision checker of this arm and its scene, or None (no collision checks).
    """

    #: extra clock rate at which a slowed schedule catches up once free (0.25: 25 % faster)
    CATCH_UP = 0.25
    #: longest lag of the schedule's clock behind real time, ns: a plan still approaching an obstacle
    #: with that much lag is stopped like one that reaches the clearance (a sender's stream is not
    #: delayed much more)
    MAX_LAG_NS = 500_000_000
    #: look-ahead of :meth:`planned_q`, s: about the time an arm at its usual TCP speeds (0.2-0.5
    #: m/s) takes to cross the arms' slow-down distance (50 mm)
    PLAN_AHEAD_S = 0.25

    def __init__(
        self,
        kin,
        safety: SafetyConfig,
        lower: np.ndarray,
        upper: np.ndarray,
        q0: np.ndarray,
        grip0: float,
        rate_hz: float,
        release_sources: set[str],
        check_budget_s: float,
        max_pending: int = 16,
        ik_iters: int = 4,
        collision=None,
    ):
        n = len(q0)
        self.kin = kin
        self.checker = ScheduleChecker(safety, lower, upper, fk=kin.fk)
        self.counters = self.checker.counters
        self.q_cmd = np.array(q0, float)
        self.guard = ServoGuard(safety, lower, upper, self.counters, q0=self.q_cmd)
        # the interpolator stretches segments to 90 % of the limits, so the guard rarely has to act
        self.joint_limits = Limits(
            vel=0.9 * safety.per_joint("max_joint_vel", n), acc=0.9 * safety.per_joint("max_joint_acc", n)
        )
        self.ee_limits = Limits(vel=(safety.max_ee_vel, safety.max_ee_ang_vel), acc=safety.max_ee_acc)
        self.release_sources = set(release_sources)
        self.timeout_ns = int(safety.heartbeat_timeout_s * 1e9)
        self.budget_s = check_budget_s
        self.max_pending = max_pending
        self.ik_iters = ik_iters
        self.grip_cmd = float(grip0)
        self.traj: Trajectory | None = None
        self.grip_traj: Trajectory | None = None
        self.q_ik: np.ndarray | None = None  # the last IK solution (seed of the next)
        self.pending: collections.deque[_Pending] = collections.deque()
        self.estop = False
        self.driver_fault: str | None = None
        self.active_source = ""
        self.last_heard: dict[str, int] = {}
        self.schedules = 0
        self.schedules_refused = 0  # refused at admission or by a staged check (published in the state)
        self.stretched = 0
        self.mode = "hold"
        self.merge_latency_ms: collections.deque = collections.deque(maxlen=500)
        #: a recovery request that passed the release check, for the node to hand to its driver
        self.recover_requested_by: str | None = None
        self._dt = 1.0 / rate_hz
        self._t_prev = 0
        self.collision = collision
        if collision is not None and not collision.pairs:
            log.warning("collision checks enabled, but the robot model has no collision geometry: nothing is checked")
        #: how far the schedule's clock lags real time after collision slow-downs, ns
        self.lag_ns = 0
        #: the closest pair at the last tick's desired configuration (None: all beyond the slow-down)
        self.contact = None
        self._x_prev: np.ndarray | None = None  # the plan's point at the last tick
        self._margin_prev = np.inf  # the collision margin at the last tick, m
        self.min_margin_m = float("inf")  # smallest collision margin commanded, m (metrics)
        self._slowed = False  # inside a collision slow-down at the last tick
        self._free_s = 0.0  # time since the last slowed tick, s
        self._peer_stamp: dict[str, int] = {}  # the other arms' states taken (stamp_ns per node)
        self._peer_stale: set[str] = set()  # other arms whose newest state is stale

    # ------------------------------------------------------------------------------- events
    def on_message(self, msg: Message, t: int) -> bool:
        """Handle one message from the arm's input at time ``t`` (ns). Returns False for a message
        of a schema the arm does not take (the node counts it).

        Raises:
            Exception: only for a bug; refusals are counted and logged, never raised.
        """
        if isinstance(msg, Heartbeat):
            self.last_heard[msg.source] = t
        elif isinstance(msg, WaypointSchedule):
            self._schedule(msg, t)
        elif isinstance(msg, ArmControl):
            self._control(msg)
        else:
            return False
        return True

    def _control(self, msg: ArmControl) -> None:
        if msg.kind == "estop":
            if not self.estop:
                self.estop = True
                self.counters["estop"] += 1
                log.error("E-STOP from %s: %s", msg.source, msg.reason or "(no reason given)")
            self.drop_schedule()
        elif msg.kind == "release":
            if not self._may_release(msg.source, "estop_release_refused", "e-stop release"):
                return
            if self.estop:
                log.warning("e-stop released by %s", msg.source)
            self.estop = False
            self.drop_schedule()  # resume from the held command: the guard's state, no jump
        elif msg.kind == "recover":
            if not self._may_release(msg.source, "recover_refused", "recovery request"):
                return
            self.drop_schedule()
            self.recover_requested_by = msg.source
        else:  # hold
            self.drop_schedule()

    def _may_release(self, source: str, counter: str, what: str) -> bool:
        """Only sources in ``safety.estop_release`` may release an e-stop or start a recovery."""
        if source in self.release_sources:
            return True
        self.counters[counter] += 1
        log.error("%s from %r refused: not in safety.estop_release %s", what, source, sorted(self.release_sources))
        return False

    def drop_schedule(self) -> None:
        """Forget the trajectory and every schedule still being checked (the arm stops and holds)."""
        self.traj = None
        self.grip_traj = None
        self.pending.clear()
        self.lag_ns = 0
        self.contact = None
        self._x_prev = None
        self._margin_prev = np.inf

    def _schedule(self, msg: WaypointSchedule, t: int) -> None:
        if not self._admit(msg, t):
            self.schedules_refused += 1

    def _admit(self, msg: WaypointSchedule, t: int) -> bool:
        """A schedule's admission: refused (False; logged and counted) or queued for its staged
        checks (True)."""
        if self.driver_fault is not None:
            self.counters["refused_driver_fault"] += 1
            log.warning("schedule from %s refused: the arm driver is in fault (%s)", msg.source, self.driver_fault)
            return False
        if self.estop:
            self.counters["refused_estop"] += 1
            log.warning("schedule from %s refused: e-stop active", msg.source)
            return False
        if len(self.pending) >= self.max_pending:
            self.counters["refused_backlog"] += 1
            log.warning("schedule from %s refused: %d schedules still being checked", msg.source, len(self.pending))
            return False
        try:
            self.checker.admit(msg.stamps_ns, msg.positions, msg.space, msg.gripper, t)
            pts = (
                self.checker.joint_static(msg.positions)
                if msg.space == "joint"
                else self.checker.pose_static(msg.positions)
            )
        except SafetyViolation:
            return False  # logged and counted by the checker; the current plan continues
        # a sender that never heartbeated gets one timeout from its first schedule, then must beat
        self.last_heard.setdefault(msg.source, t)
        joint = msg.space == "joint"
        self.pending.append(_Pending(msg, pts, 0 if joint else len(pts), 0 if joint else len(pts)))
        return True

    def on_other_arm(self, node: str, state, t: int) -> None:
        """The newest ``robot/state`` of another arm in this arm's workspace (``q`` (n,) rad,
        ``q_plan`` (n,) rad or None, ``stamp_ns``), or None before its first: its measured and
        planned joints for the collision checks (:meth:`CollisionChecker.set_other`), taken once
        per state (the same state again only has its age checked). A state of the wrong size or
        with non-finite joints is counted once (``collision_bad_peer_state``) and the last good one
        kept; a peer whose newest state is older than the heartbeat timeout is counted once per
        silence (``collision_stale_peer``) and its last joints kept (the other arm's own node
        holds it when its sender is silent)."""
        if state is None:
            return
        stale = t - int(state.stamp_ns) > self.timeout_ns
        if stale and node not in self._peer_stale:
            self.counters["collision_stale_peer"] += 1
        (self._peer_stale.add if stale else self._peer_stale.discard)(node)
        stamp = int(state.stamp_ns)
        if self._peer_stamp.get(node) == stamp:
            return
        self._peer_stamp[node] = stamp
        q = np.asarray(state.q, float)
        plan = None if state.q_plan is None else np.asarray(state.q_plan, float)
        shape = self.collision.other_qpos[node].shape
        if q.shape != shape or not np.all(np.isfinite(q)) or (plan is not None and plan.shape != shape):
            self.counters["collision_bad_peer_state"] += 1
            return
        self.collision.set_other(node, q, plan if plan is not None and np.all(np.isfinite(plan)) else None)

    def on_driver_fault(self, reason: str) -> None:
        """The driver reported a fault (a reflex, a lost connection): drop the plan and hold until
        it reads again; one fault episode is counted once, whatever its reasons."""
        if self.driver_fault is None:
            self.driver_fault = reason
            self.counters["driver_fault"] += 1
            log.error("arm driver fault, holding: %s", reason)
            self.drop_schedule()
        elif self.driver_fault != reason:  # e.g. a UR's stopped program, then its protective stop
            self.driver_fault = reason
            log.error("arm driver fault, still holding: %s", reason)
        self.mode = "estop"
        self._t_prev = 0

    def on_reading(self, q: np.ndarray) -> None:
        """A good driver reading with joints ``q`` (rad): after a fault, resume from there (no jump)."""
        if self.driver_fault is not None:
            log.warning("arm driver recovered from: %s", self.driver_fault)
            self.driver_fault = None
            self.q_cmd = np.array(q, float)
            self.q_ik = None
            self.guard.reset(self.q_cmd)

    # ------------------------------------------------------------------------------- checks
    def _advance_checks(self, t: int) -> None:
        """Finish the checks of waiting schedules within this tick's budget; merge those done."""
        budget = self.budget_s
        while self.pending:
            pend = self.pending[0]
            try:
                if pend.scanned < len(pend.points):
                    pend.scanned = self.checker.joint_workspace(pend.points, pend.scanned, budget)
                    if pend.scanned < len(pend.points):
                        return  # resume next tick
                if self.collision is not None and pend.collision_scanned < len(pend.points):
                    pend.collision_scanned = self._collision_scan(pend, budget)
                    if pend.collision_scanned < len(pend.points):
                        return
            except SafetyViolation:
                self.pending.popleft()
                self.schedules_refused += 1
                continue
            self.pending.popleft()
            try:
                self._merge(pend, t)  # may refuse a jump (counted by the checker)
            except SafetyViolation:
                self.schedules_refused += 1
            budget = 0.0  # at most one FK per further schedule this tick

    def _collision_scan(self, pend: _Pending, budget_s: float) -> int:
        """Collision check of a joint schedule's path, segment by segment from the last one
        checked, until ``budget_s`` is spent; returns the waypoint index to resume from.

        Raises:
            SafetyViolation: "collision", naming the waypoint whose segment comes too close and
                the pair (counted and logged by the checker).
        """
        i, hit = self.collision.scan_path(pend.points, pend.collision_scanned, time.perf_counter() + budget_s)
        if hit is not None:
            raise self.checker._violation("collision", f"waypoint {i}: {hit.describe()}")
        return i

    def _collision_guard(self, q_cmd: np.ndarray, q_brake: np.ndarray, x: np.ndarray, dt: float) -> bool:
        """Servo-rate collision check of this tick's command ``q_cmd`` and of the stop that could
        follow it: each pair's distance at ``q_cmd`` is counted less how far its geoms can move
        on the way to the brake point ``q_brake`` (:meth:`ServoGuard.brake_point`,
        :meth:`CollisionChecker.motion_bound`), so an arm approaching fast keeps its braking
        distance clear as well. False to stop (the schedule is dropped; the caller withdraws the
        command); else the slow-down, as the lag of the schedule's clock. ``x``: the plan's point this tick (joints or TCP pose): only a plan that moves is
        slowed."""
        motion = self.collision.motion_bound(q_cmd, q_brake) if self.guard.moving else None
        c = self.contact = self.collision.closest(q_cmd, motion)  # its distance once braked, at worst
        margin = np.inf if c is None else c.margin
        approaching, self._margin_prev = margin < self._margin_prev, margin
        if c is not None and (c.margin < 0 or (self.lag_ns >= self.MAX_LAG_NS and approaching)):
            self.counters["collision_stop"] += 1
            why = "" if c.margin < 0 else f" (slowed by {self.lag_ns / 1e6:.0f} ms and still approaching)"
            log.error(
                "collision: stopping the arm before %s (braking up to %.1f mm counted)%s",
                c.describe(),
                0.0 if motion is None else float(motion.max()) * 1e3,
                why,
            )
            self.drop_schedule()
            return False
        self.min_margin_m = min(self.min_margin_m, margin)
        scale = self.collision.scale_of(c)
        # only a moving plan is slowed: a held target (a trajectory's end, a grasp) adds no lag
        prev = self._x_prev  # (a joint plan and a pose plan differ in size: a switch counts as moving)
        moving = prev is None or prev.shape != x.shape or float(np.max(np.abs(x - prev))) > 1e-12
        self._x_prev = np.array(x, float)
        if scale < 1.0 and moving:
            if not self._slowed:  # one count per slow-down, not per tick
                self.counters["collision_slowdown"] += 1
            self.lag_ns += int((1.0 - scale) * dt * 1e9)
        elif self.lag_ns and scale >= 1.0:
            self.lag_ns = max(0, self.lag_ns - int(self.CATCH_UP * dt * 1e9))
        # a slow-down ends after 50 ms free (slowing shortens the braking distance, which can lift
        # the margin over the slow-down distance for a tick: one slow-down, not two)
        self._free_s = 0.0 if scale < 1.0 else self._free_s + dt
        self._slowed = scale < 1.0 or (self._slowed and self._free_s < 0.05)
        return True

    def _merge(self, pend: _Pending, t: int) -> None:
        msg, pts = pend.msg, pend.points
        if msg.stamp_ns and 0 <= t - msg.stamp_ns < 1_000_000_000:  # send -> merge (same-host clock; a
            self.merge_latency_ms.append((t - msg.stamp_ns) / 1e6)  # sender elsewhere reads out of range)
        t -= self.lag_ns  # the schedule's clock (behind real time after a collision slow-down)
        t0 = int(msg.stamps_ns[0])
        if msg.space == "joint":
            # a jump is measured against where the current plan is when the new one takes over
            ref = self.traj.eval(t0) if self.traj is not None and self.traj.kind == "joint" else self.q_cmd
            self.checker.joint_jump(pts[0], ref)
            if self.traj is None or self.traj.kind != "joint":
                self.traj = Trajectory("joint", t, self.q_cmd)
            self.stretched += self.traj.merge(msg.stamps_ns, pts, t, self.joint_limits)
        else:
            ee_now = self.kin.fk(self.q_cmd)
            ref = self.traj.eval(t0) if self.traj is not None and self.traj.kind == "pose" else ee_now
            self.checker.pose_jump(pts[0], ref)
            if self.traj is None or self.traj.kind != "pose":
                self.traj = Trajectory("pose", t, ee_now)
                self.q_ik = None  # the new pose path starts where the arm is
            self.stretched += self.traj.merge(msg.stamps_ns, pts, t, self.ee_limits)
        if msg.gripper is not None:
            g = np.clip(np.asarray(msg.gripper, float), 0.0, 1.0)[:, None]
            if self.grip_traj is None:
                self.grip_traj = Trajectory("joint", t, np.array([self.grip_cmd]))
            self.grip_traj.merge(msg.stamps_ns, g, t)
        self.active_source = msg.source
        self.schedules += 1

    # ------------------------------------------------------------------------------- tick
    def tick(self, t: int) -> tuple[np.ndarray, float, float]:
        """One servo tick at time ``t`` (ns), after this tick's messages.

        Returns:
            (q (n,) joint command in rad, gripper opening in [0, 1], dt in s: the period that really
            passed since the last command, overruns included, which the guard limited the step by).
        """
        self._advance_checks(t)
        if (
            self.traj is not None
            and t - self.lag_ns < self.traj.end_ns
            and t - self.last_heard.get(self.active_source, 0) > self.timeout_ns
        ):
            self.counters["heartbeat_stale"] += 1
            heard = self.last_heard.get(self.active_source)
            log.error(
                "command source %r silent for %s (> %.0f ms): holding",
                self.active_source,
                "ever" if heard is None else f"{(t - heard) / 1e6:.0f} ms",
                self.timeout_ns / 1e6,
            )
            self.drop_schedule()
        dt = max((t - self._t_prev) / 1e9, 1e-5) if self._t_prev else self._dt
        if self.estop or self.traj is None:
            q = self.guard.stop(dt)  # jerk-limited stop, then hold where it ended
            self.mode = "estop" if self.estop else "hold"
            self.q_ik = None
        else:
            te = t - self.lag_ns  # the schedule's clock
            x = self.traj.eval(te)  # the plan's joints or TCP pose now
            if self.traj.kind == "joint":
                q_des = x
            else:
                # seeded from the last IK solution, not from the guard's command: the command lags
                # the path wherever the guard smooths, and a lagging seed moves the redundant arm's
                # solution around its null space tick by tick (a desired stream the guard must then
                # smooth again); from a hold, seeded from where the arm is
                seed = self.q_cmd if self.q_ik is None else self.q_ik
                q_des = self.q_ik = self.kin.ik(x, seed, iters=self.ik_iters, raise_on_fail=False)
            withdrawn = False
            if self.collision is not None and np.all(np.isfinite(q_des)):
                # the tick's command is kept only if it and a stop begun after it stay clear: the
                # command checked with its braking motion, not q_des (the guard's command lags q_des
                # and brakes from speed, and a late tick moves q_des far at once); else withdrawn,
                # and the arm stops from the last command, whose braking the last tick checked
                before = self.guard.save()
                q = self.guard.track(q_des, dt)
                if not self._collision_guard(q, self.guard.brake_point(), x, dt):
                    self.guard.restore(before)
                    withdrawn = True
            else:
                q = self.guard.track(q_des, dt)
            if withdrawn:
                q, self.mode, self.q_ik = self.guard.stop(dt), "hold", None
            else:
                if self.grip_traj is not None:
                    self.grip_cmd = float(self.grip_traj.eval(te)[0])
                self.mode = "track" if te < self.traj.end_ns or self.guard.moving else "hold"
        if not np.all(np.isfinite(q)):  # the last gate before the driver: never a non-finite command
            self.counters["servo_non_finite_output"] += 1
            log.error("servo guard produced a non-finite command: holding the last one")
            q = self.q_cmd.copy()
            self.guard.reset(q)
        self.q_cmd = q
        self._t_prev = t
        return q, self.grip_cmd, dt

    def stop_tick(self, t: int) -> tuple[np.ndarray, float] | None:
        """One tick of the jerk-limited stop at shutdown: the command, or None once at rest (or in
        a driver fault, where there is nothing to stop)."""
        if self.driver_fault is not None or not self.guard.moving:
            return None
        dt = max((t - (self._t_prev or t)) / 1e9, 1e-5) if self._t_prev else self._dt
        q = self.guard.stop(dt)
        self._t_prev = t
        return q, dt

    def planned_q(self) -> np.ndarray:
        """(n,) rad: where this arm's commands are headed, the commanded joints ``PLAN_AHEAD_S``
        ahead at the guard's commanded velocity, within the joint limits (the commanded joints
        when still). Published in ``robot/state`` (``q_plan``) for the other arms' collision
        checks."""
        g = self.guard
        return np.clip(self.q_cmd + g.v * self.PLAN_AHEAD_S, g.lower, g.upper)

    def metrics(self) -> dict[str, float]:
        """The core's counters and figures (flat str -> float)."""
        m = {f"safety.{k}": float(v) for k, v in self.counters.items()}
        if self.merge_latency_ms:  # schedule sent -> merged at this servo tick (the first that uses it)
            a = np.array(self.merge_latency_ms)
            m.update(merge_latency_p50_ms=float(np.percentile(a, 50)), merge_latency_p99_ms=float(np.percentile(a, 99)))
        if self.collision is not None:
            m.update(collision_lag_ms=self.lag_ns / 1e6, collision_min_margin_mm=self.min_margin_m * 1e3)
        m.update(
            schedules=float(self.schedules),
            schedules_refused=float(self.schedules_refused),
            stretched_segments=float(self.stretched),
            pending_schedules=float(len(self.pending)),
        )
        return m
