"""Controller node: wiring that runs a policy's action chunks on the arms.

Decisions live in pure cores with their own tests (``control.modes``: who drives; ``control.executor``:
strategy, committed plan, delay d; ``control.requests``: when a request leaves; ``control.obs_builder``;
``control.teleop_mix``). The policy is reached through ``nodes.policy_client``, the arms through
``nodes.arm_fanout``; settings in ``nodes.controller_params``, the cores built from them by
``nodes.controller_cores``. One owner thread changes all state: it steps at ``rate_hz`` and, between
steps, wakes on every post to its inbox (a policy reply, a camera frame, a fast-layer tick), so a
chunk reaches the arms as it arrives. Threads share only the inbox.
"""

from __future__ import annotations

import collections
import logging
import queue

import numpy as np

from robot_stack.comm.messages import CameraFrame, EpisodeEvent, RobotState, TeleopCommand, WaypointSchedule
from robot_stack.control.executor import StageTimer
from robot_stack.control.observation import StaleStreamError
from robot_stack.control.refusals import RefusalWatch
from robot_stack.nodes.arm_fanout import ArmFanout
from robot_stack.nodes.controller_cores import build_cores
from robot_stack.nodes.controller_params import ControllerParams
from robot_stack.nodes.policy_client import Job, PolicyWorker, make_policy_client, transient_kind
from robot_stack.runtime.clock import Ticker, now_ns
from robot_stack.runtime.node import Node

log = logging.getLogger(__name__)
MS = 1_000_000
_FROM_REST = "first schedule from rest: its chunk was observed %.0f ms ago, its first waypoint is %.0f ms ahead and "
_FROM_REST += "%.0f mm from the TCP"


class ControllerNode(Node):
    """Executes action chunks with receding-horizon strategies (see the module docstring)."""

    Params = ControllerParams

    @classmethod
    def publishes(cls, params) -> list[str]:
        return [WaypointSchedule.EXECUTED_TOPIC]  # what it sent each arm, with its origin (the recorder's actions)

    default_rate_hz = 10.0
    #: unexpected inference errors in a row that end the node (the launcher reports it)
    MAX_INFERENCE_FAILURES = 20
    COUNTERS = ("requests", "obs_holds", "teleop_steps", "stale_holds", "anchor_waits_timed_out", "errors")

    def configure(self) -> None:
        p, c = self.params, build_cores(self.params, self.ctx.config, self.MAX_INFERENCE_FAILURES)
        self.cam_ids, self.arm_names, self.has_policy, self.dt_ns = c.cam_ids, c.arm_names, c.has_policy, c.dt_ns
        self.obs, self.exec, self.modes, self.gate = c.obs, c.exec, c.modes, c.gate
        self.teleop_mix, self.replay, self.fast, self.worker = c.teleop_mix, c.replay, c.fast, None
        self.stats = collections.Counter(dict.fromkeys(self.COUNTERS, 0))
        self.holds: collections.Counter[str] = collections.Counter()  # arm holds by reason (``holds.<reason>``)
        self.refusals = RefusalWatch()
        self.timing = StageTimer(("inference", "e2e", "fast_compute", "fast_period"), maxlen=2000)
        self.inbox, self.teleop_seq, self._last_fast = queue.SimpleQueue(), -1, None
        topics, n = (RobotState.TOPIC, CameraFrame.TOPIC), len(self.arm_names)
        self.sub = self.own(
            self.ctx.subscriber([*self.arm_names, *p.cameras], topics, history=500 * n, on_message=self._on_sample)
        )
        # the arms' heartbeats come from this loop's step: a hung loop reads as silent and they hold
        self.arms = ArmFanout({a: self.own(self.ctx.arm_client(a, heartbeat_hz=0)) for a in self.arm_names}, self.pub)
        self.rx = self.own(self.ctx.receiver())
        self.teleop_sub = self.own(self.ctx.subscriber([p.teleop], ("teleop/",), history=200)) if p.teleop else None
        if self.fast is not None and self.ctx.start_threads:  # its ticker only posts; the owner computes and sends
            self.own(Ticker(self.fast.period_ns, self.inbox, "fast"))
        if c.setup is not None:
            client = make_policy_client(p, self.ctx, self.dt_ns / 1e9)
            self.worker = self.own(PolicyWorker(client, c.setup, self.inbox, threaded=self.ctx.start_threads))
            self.workers.append(self.worker)

    # ------------------------------------------------------------------------- posts (owner thread)
    def _on_sample(self, topic: str, msg) -> None:  # the subscriber's thread: post frames, nothing else
        if topic != RobotState.TOPIC:
            self.inbox.put(("frame", topic, msg.seq, msg.stamp_ns))

    def on_post(self, item) -> None:
        kind, now = item[0], now_ns()
        if kind == "reply":
            self._on_reply(*item[1:])
        elif kind == "negotiated":
            n = item[1]
            self.obs.agree(n.obs_keys, n.obs_horizon, n.image_sizes, n.point_specs)
            self.exec.action_order, self.gate.ready = n.action_order, True
        elif kind == "failed":
            return self.fail(item[1])
        elif kind == "frame" and self.gate.on_frame(item[1], item[2]):  # its age now: the camera pipeline's latency
            self.exec.stages.add(
                "frame_arrival", (now - item[3] - self.obs.offsets.get(item[1].rpartition("/")[2], 0)) / MS
            )
            return self._request(now)
        elif kind == "fast":
            return self._fast_tick(item[1])
        self.on_wake()

    def on_wake(self) -> None:
        now = now_ns()
        driving, anchor = self.modes.policy_driving and self.worker is not None, self.obs.anchor(self._latest_frame)
        d = self.gate.decide(now, driving, self.exec.request_due(now), self.exec.next_request_ns(), anchor)
        self.wake_at_ns = d.wake_at_ns
        self.stats["anchor_waits_timed_out"] += d.timed_out
        if d.request:
            self._request(now)

    # ------------------------------------------------------------------------- requests and replies
    def _request(self, now: int) -> None:
        generation, t0 = self.modes.generation, now_ns()
        try:
            frames = {cid: self.sub.history(CameraFrame.topic(cid)) for cid in self.cam_ids.values()}
            obs, arrays = self.obs.build(frames, self.sub.history(RobotState.TOPIC), t0)
        except StaleStreamError as e:
            self.stats["obs_holds"] += 1
            if self.stats["obs_holds"] <= 5 or self.stats["obs_holds"] % 50 == 0:
                log.warning("holding: %s", e)
            self._clear_plan(hold=f"stale observation: {e}", reason="stale_observation")
            return self.gate.held(now, self.dt_ns)
        window, with_prefix = self.exec.request(t_send := now_ns(), obs, arrays)
        self.stats["requests"] += 1
        self.gate.sent()
        self.worker.submit(Job(generation, window, obs.t_obs_ns, t0, t_send, with_prefix))

    def _on_reply(self, job: Job, reply, arrival: int) -> None:
        if isinstance(reply, Exception):
            self.stats["errors"] += 1
            transient = transient_kind(reply)  # (the gate logs an outage's start, summary and end)
            if (why := self.gate.replied(arrival, reply, transient, self.dt_ns)) is not None:
                self.fail(why)
            return
        self.gate.replied(arrival, None, None, self.dt_ns)
        self.timing.add("inference", (arrival - job.t_send_ns) / MS)
        t0 = now_ns()
        current, driving = job.generation == self.modes.generation, self.modes.policy_driving
        if current and driving and self.refusals.repeats(reply.actions, t0):
            # the chunk the arm refused, again, before the wait is over (its observation did not
            # change): held back; no request leaves until the wait ends
            self.gate.backoff_until = max(self.gate.backoff_until, self.refusals.retry_at_ns)
            n = self.refusals.refused_repeats
            if n <= 3 or n % 20 == 0:
                log.warning("chunk equal to the one the arm refused: held back (%d so far) until the wait ends", n)
            return
        sched, why = self.exec.on_reply(reply, job, arrival, t0, current, driving, len(self.arm_names))
        if why is not None and (self.exec.counts["bad_chunks"] <= 5 or not why.startswith("refused (#")):
            log.warning("chunk %s (inference %.0f ms)", why, (arrival - job.t_obs_ns) / MS)
        if sched is not None:
            self.exec.stages.add("planning", (now_ns() - t0) / MS)
            self._send(sched.stamps_ns, sched.actions, t_obs=job.t_obs_ns)
            self.refusals.sent(reply.actions, now_ns())

    # ------------------------------------------------------------------------- sending
    def _send(self, stamps: np.ndarray, actions: np.ndarray, origin: str = "policy", t_obs: int | None = None) -> None:
        """(k, 8 per arm) actions to every arm through the committed plan; ``t_obs``: the chunk's anchor."""
        t0, st = now_ns(), self._latest_state(self.arm_names[0])
        tcp = st.ee_pose if origin == "policy" and t_obs is not None and st is not None else None
        if (lead := self.exec.committed(stamps, actions, t0, tcp)) is not None:  # the arm was at rest
            age_ms, ahead_ms = (t0 - t_obs) / MS, (int(stamps[0]) - t0) / MS
            log.info(_FROM_REST, age_ms, ahead_ms, lead * 1e3)
        if self.fast is not None and origin == "policy":
            actions = self.fast.shift(actions)  # the plan's next steps keep the fast layer's correction
        self.arms.send(stamps, actions, origin)
        if t_obs is not None:
            self.exec.stages.add("send", (now_ns() - t0) / MS)
            self.timing.add("e2e", (now_ns() - t_obs) / MS)

    def _clear_plan(self, hold: str | None = None, reason: str = "") -> None:
        """Drop the plan (chunks in flight become stale). ``hold``: why the arms must stop now
        (they brake, jerk-limited, and hold), keeping a replay and teleop targets; else all goes.
        ``reason``: the hold's name, counted as ``holds.<reason>`` when a plan was running."""
        had_plan = self.exec.planned_until(now_ns())
        for core in filter(
            None,
            [self.exec, self.modes, self.gate, self.refusals]
            + ([] if hold else [self.replay, self.teleop_mix, self.fast]),
        ):
            core.clear()
        if hold and had_plan:
            self.stats["stale_holds"] += 1
            self.holds[reason or "other"] += 1
            log.warning("arms told to hold: %s", hold)
            self.arms.hold()

    def _latest_frame(self, cam_id: str):
        return self.sub.latest(CameraFrame.topic(cam_id))

    def _latest_state(self, arm: str):
        return next((m for m in reversed(self.sub.history(RobotState.TOPIC)) if m.source == arm), None)

    def _fast_tick(self, t: int) -> None:
        """One fast-layer tick (posted at the layer's rate): its schedule goes out as origin "fast"."""
        if self._last_fast is not None:
            self.timing.add("fast_period", (t - self._last_fast) / MS)
        self._last_fast = t
        if not self.modes.policy_driving:
            return self.fast.reset()
        plan = self.exec.plan
        out = self.fast.tick(t, self.sub.latest(RobotState.TOPIC), plan.stamps_ns.copy(), plan.actions.copy())
        self.timing.add("fast_compute", (now_ns() - t) / MS)
        if out is not None:
            self.arms.dispatch(self.arm_names[0], out[0], out[1][:, :7], "ee", np.clip(out[1][:, 7], 0, 1), "fast")

    # ------------------------------------------------------------------------- control step
    def step(self) -> None:
        if self._fatal is None:
            self.arms.heartbeat()  # from the control loop itself: a hung loop reads as silent
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("controller_input", self._on_event, item[1])
        states = {a: self._latest_state(a) for a in self.arm_names}
        self.modes.arms_in_estop([a for a, st in states.items() if st is not None and st.mode == "estop"])
        for a, st in states.items():
            if st is not None and self.refusals.arm_state(a, st.schedules_refused, st.stamp_ns):
                log.warning("arm %s refused the policy's last chunk (its log names the check)", a)
        if self.modes.held:  # every arm holds until the e-stop is released (the others' plans are dropped)
            return self._clear_plan(hold=f"arm {', '.join(self.modes.estopped)} is in e-stop", reason="estop")
        if (part := self.replay.due(now_ns())) is not None:
            self._send(*part, origin="replay")
        if self.teleop_sub is not None:
            self._teleop_step()
        if self.modes.policy_driving:
            self.on_wake()
            if (sched := self.exec.on_tick(now_ns())) is not None:
                self._send(sched.stamps_ns, sched.actions)

    def _on_event(self, ev) -> None:
        if isinstance(ev, WaypointSchedule):  # a replayed stream (robot-stack replay), one schedule per arm
            if ev.space != "ee":
                raise ValueError(f"replay schedules are TCP poses (N, 7), got {ev.space} {ev.positions.shape}")
            if (
                self.modes.enabled
                and self.replay.add(ev.arm, ev.stamps_ns, ev.positions, ev.gripper)
                and (part := self.replay.due(now_ns())) is not None
            ):
                self._send(*part, origin="replay")
        elif isinstance(ev, EpisodeEvent) and ev.kind != "quit":
            self.exec.prompt = (ev.task or self.params.prompt) if ev.kind == "start" else self.exec.prompt
            self.modes.episode(ev.kind)
            self._clear_plan()
            log.info("episode event %s: execution %s", ev.kind, "on" if self.modes.enabled else "off")

    def _teleop_step(self) -> None:
        """New teleop commands: buttons (intervene / release / estop) always, motion when teleop drives."""
        cmds = [m for m in self.teleop_sub.history(TeleopCommand.TOPIC) if m.seq > self.teleop_seq]
        if not cmds:
            return
        self.teleop_seq = cmds[-1].seq
        estop, replan = self.modes.buttons([c.buttons for c in cmds])
        if estop:
            self.arms.estop("teleop e-stop button")
        if replan:  # an intervention or a hand-back
            self._clear_plan()
        if not self.modes.teleop_driving:
            return
        step = self.teleop_mix.step(cmds, {a: self._latest_state(a) for a in self.arm_names}, now_ns())
        self.stats["errors"] += bool(step.unknown_arms)  # (the mixer logs them)
        self.stats["teleop_steps"] += bool(step.lockstep is not None or step.each)
        if step.lockstep is not None:
            self._send(*step.lockstep, origin="teleop")
        for arm, stamps, positions, space, gripper in step.each:
            self.arms.dispatch(arm, stamps, positions, space, gripper, "teleop")

    def metrics(self) -> dict[str, float]:
        m = {k: float(v) for k, v in self.stats.items()} | self.exec.metrics() | self.timing.metrics(prefix="")
        m |= self.modes.metrics() | self.obs.metrics() | (self.fast.metrics() if self.fast is not None else {})
        m |= self.refusals.metrics() | {f"holds.{k}": float(v) for k, v in self.holds.items()}
        return m | {"errors": float(self.stats["errors"] + self.arms.errors)}
