"""Controller node: runs a policy's action chunks on the arm with a chosen execution strategy.

Observation windows are assembled from the newest samples (``robot_stack.control.observation``), sent to
the policy node (request/reply with timeout and reconnect), and each returned chunk is turned into
a timed waypoint schedule (``robot_stack.control.chunking.plan_chunk``) for the arm node, which merges it
into its trajectory at "now". Strategies (DESIGN.md):

- ``sync``: receding horizon (Diffusion Policy): infer, execute s actions, infer again; the next
  request starts so that its chunk should arrive (measured delay d) before the s actions end;
- ``async``: inference runs while the arm executes, one request per control period at most (or
  back to back when inference is slower); each new chunk takes over at its first action not yet due;
- ``ensemble``: ACT temporal ensembling: every control step, and each chunk's arrival, sends the
  exp(-m i)-weighted average of all chunks' predictions for the next steps;
- ``rtc``: real-time chunking: like async, but each request carries the d actions already
  committed for the next chunk's first steps; the policy inpaints the rest.

Teleop is one more action source through the same path (``teleop`` names the teleop node): with
``source: teleop`` every control step turns the newest teleop commands into a waypoint one control
period ahead (absolute targets as given; deltas added to the current target). A teleop
``intervene`` button switches to teleop at once (the policy's plan is dropped), ``release`` hands
back to the policy; the executed waypoints are published on ``controller/action`` with their origin,
so a recording shows who commanded what. Episode events on the node's input (``start``; ``stop``,
``reset``, ``discard``) enable and disable execution between episodes (``autostart`` says whether it
starts enabled). An end-effector waypoint schedule on the input (``robot-stack replay``) is executed
like a chunk, with origin ``replay``; with several arms, one schedule per arm (``arm`` set, the same
stamps), executed together once every arm's has come.

Latency (async, RTC, ensembling): a due request waits for the camera frame that advances the
observation anchor (``request_on_frame``), so it starts as that frame arrives, and a chunk goes to
the arm as it arrives (never at the next tick). A chunk whose request left before the plan was
dropped (episode event, hold, intervention) is dropped on arrival (``stale_chunks``).

The strategies themselves are plain classes over an injected clock
(``robot_stack.control.strategies``: when to request, what prefix to send, what an arriving chunk
becomes, what each control step sends); this node does the I/O and the threads around them, and
keeps the committed plan with the arm node's merge rule.

Several arms (``arms``, bimanual): one controller drives them in lockstep. A chunk covers every
arm, 8 actions [x y z qx qy qz qw gripper] per arm in the order of ``arms``, each in its arm's base
frame; each control step's schedule goes to every arm with the same stamps. The observation's
``state`` is the arms' state vectors in that order, all at the window's times. Safety stays per arm
(each arm node checks its own schedules); a stale stream, or an arm in e-stop, holds every arm
(``hold_together``). Teleop drives several arms too: each command names its arm
(``TeleopCommand.arm``, "" for the first), the controller keeps a target per arm and sends every
arm its target each step a command arrives (an arm no command moved holds where it is), so the
recorded actions cover every arm on the same stamps. Intervention stays one-arm.

Metrics in the heartbeat: inference latency, delay d, dropped (stale) actions, late steps, chunks
over budget, the jump in commanded position at chunk switches, observation holds.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.control.chunking import DelayEstimator, chunk_anchor_ns, chunk_problem
from robot_stack.control.modes import ModeMachine
from robot_stack.control.strategies import STRATEGIES, CommittedPlan
from robot_stack.runtime.clock import now_ns
from robot_stack.comm.messages import CameraFrame, EpisodeEvent, ObservationWindow, RobotState, TeleopCommand, WaypointSchedule
from ..teleop.base import apply_commands
from robot_stack.runtime.node import Node, NodeParams
from robot_stack.control.features import camera_images, state_vector
from robot_stack.control.observation import StaleStreamError, assemble
from robot_stack.comm.transport import RemoteError, RequestClient, TransportTimeout

log = logging.getLogger(__name__)


class ControllerParams(NodeParams):
    arm: str = "arm"
    arms: list[str] | None = Field(None, min_length=1, description=(
        "several arm nodes driven in lockstep (bimanual): a chunk holds 8 actions per arm in this order, each "
        "in its arm's base frame, and the state is their state vectors in this order. None: the one arm ``arm``"))
    hold_together: bool = Field(True, description="several arms: an arm in e-stop holds the others too")
    policy: str = Field("policy", description="policy node name (ignored when policy_endpoint is set)")
    policy_endpoint: str | None = Field(None, description="a remote policy: tcp://... (our protocol, CURVE off-host) "
                                        "or ws://127.0.0.1:PORT / wss://... (openpi's websocket protocol)")
    openpi_keys: dict[str, str] | None = Field(None, description="ws:// policy: openpi observation key -> our key")
    openpi_api_key_env: str | None = Field(None, description="ws:// policy: environment variable with the API key")
    cameras: list[str] = Field(default_factory=list, description="camera node names")
    obs_keys: list[str] | None = Field(None, min_length=1,
                                       description="keys sent to the policy: ee_pose, q, gripper_width, state, "
                                       "<camera_id>.color/.depth/.points (None: the policy's spec; [ee_pose] "
                                       "without one); .points needs the camera's T_base_camera in the setup's "
                                       "calibration file and the cloud settings from the policy's spec")
    rate_hz: float = Field(10.0, gt=0, le=100)
    obs_horizon: int | None = Field(None, ge=1, description="To (None: the policy's spec; 2 without one)")
    strategy: Literal["sync", "async", "ensemble", "rtc"] = "sync"
    execute_horizon: int = Field(8, ge=1)
    ensemble_m: float = 0.01
    ensemble_steps: int = Field(4, ge=1, description="ensemble: steps sent ahead each control step")
    exec_latency_s: float = Field(0.01, ge=0)
    start_from_rest: bool = Field(True, description="a chunk that finds nothing planned since its observation "
                                  "(the arm at rest) is stamped from its arrival, so its first actions run first "
                                  "(chunking.chunk_anchor_ns); false: from its observation, d steps dropped")
    max_obs_age_s: float = Field(0.3, gt=0)
    request_timeout_s: float = Field(2.0, gt=0)
    source: Literal["policy", "teleop", "external"] = Field(
        "policy", description="who drives: the policy, a teleop device, or only schedules sent to the input (replay)")
    teleop: str | None = Field(None, description="teleop node name (teleop source and intervention)")
    teleop_timeout_s: float = Field(0.5, gt=0, description="teleop commands older than this are not executed")
    autostart: bool = Field(True, description="execute from start-up (else wait for an episode start event)")
    spec_timeout_s: float = Field(60.0, gt=0, description="start-up wait for the policy's spec (it may be loading a model), s")
    image_size: tuple[int, int] | None = Field(None, description="(h, w) camera images are resized to (INTER_AREA); "
                                               "None: each camera's size in the policy's spec (native without one)")
    fast: str | None = Field(None, description="slow-fast control: a fast-layer file (robot-stack train-fast) run at "
                             "its rate in this node, correcting the plan from the arm's wrist wrench (RDP-style)")
    fast_lookahead_s: float = Field(0.5, gt=0, description="fast layer: how far ahead each tick resends the plan, s")
    request_on_frame: bool = Field(True, description="async/rtc/ensemble: a due request waits (up to max_obs_age_s) "
                                   "for the frame that advances the observation anchor")

    @property
    def arm_nodes(self) -> list[str]:
        """The arm nodes this controller drives, in action order."""
        return list(self.arms) if self.arms else [self.arm]

    def references(self) -> dict[str, str]:
        refs = {**{a: "arm" for a in self.arm_nodes}, **{c: "camera" for c in self.cameras}}
        if self.teleop:
            refs[self.teleop] = "teleop"
        if self.source == "policy" and self.policy_endpoint is None:
            refs[self.policy] = "policy"
        return refs


class ControllerNode(Node):
    """Executes action chunks with receding-horizon strategies."""

    Params = ControllerParams
    default_rate_hz = 10.0

    def configure(self) -> None:
        p = self.params
        cfg, rd = self.ctx.config, self.ctx.run_dir
        self.dt_ns = int(round(1e9 / p.rate_hz))
        self.cam_ids = {}
        for c in p.cameras:
            nc = cfg.nodes.get(c)
            if nc is None or nc.kind != "camera":
                raise ValueError(f"controller.cameras: {c!r} is not a camera node")
            self.cam_ids[c] = nc.typed.camera_id
        self.arm_names = p.arm_nodes
        if len(set(self.arm_names)) != len(self.arm_names):
            raise ValueError(f"controller.arms: an arm is named twice in {self.arm_names}")
        self.multi = len(self.arm_names) > 1
        if self.multi and p.fast is not None:
            raise ValueError("controller.fast: the fast layer corrects one arm's plan")
        #: action dimension: 8 per arm [x y z qx qy qz qw gripper]
        self.action_dim = 8 * len(self.arm_names)
        self.sub = self.ctx.subscriber([*self.arm_names, *p.cameras], (RobotState.TOPIC, CameraFrame.TOPIC),
                                       history=500 * len(self.arm_names))
        # the arms' heartbeats come from this node's control step itself (``step``), so a hung or
        # stopped control loop reads as silent and the arms hold after their heartbeat timeout
        self.arm_clients = {a: self.ctx.arm_client(a, heartbeat_hz=0) for a in self.arm_names}
        self.arm = self.arm_clients[self.arm_names[0]]
        for a in self.arm_names:
            arm_nc = cfg.nodes.get(a)
            if arm_nc is not None and arm_nc.kind == "arm":
                hb_timeout = float(arm_nc.typed.safety.heartbeat_timeout_s)
                if 1.0 / p.rate_hz >= 0.5 * hb_timeout:
                    raise ValueError(f"controller.rate_hz {p.rate_hz} Hz: the control period must be under half "
                                     f"the heartbeat timeout of arm {a} ({hb_timeout} s)")
        self.has_policy = p.policy_endpoint is not None or p.policy in cfg.nodes
        # the observation the policy gets: as configured, else from its spec (_check_spec), else these
        self.obs_keys: list[str] = list(p.obs_keys or ["ee_pose"])
        self.obs_horizon: int = p.obs_horizon or 2
        self.image_sizes: dict[str, tuple[int, int] | None] = {}  # camera id -> (h, w) to resize to
        self.openpi_keys = self.openpi_client = None
        if p.policy_endpoint is not None and p.policy_endpoint.startswith(("ws://", "wss://")):
            from robot_stack.comm.openpi import OpenpiClient, OpenpiKeys

            self.openpi_keys = OpenpiKeys(keys=p.openpi_keys or {"observation/state": "state"})
            unmapped = set(p.obs_keys or ["ee_pose"]) - set(self.openpi_keys.keys.values())
            if unmapped:
                raise ValueError(f"controller.openpi_keys: no openpi key for observation keys {sorted(unmapped)}")
            key = os.environ.get(p.openpi_api_key_env) if p.openpi_api_key_env else None
            if p.openpi_api_key_env and not key:
                raise ValueError(f"controller.openpi_api_key_env: environment variable {p.openpi_api_key_env} is not set")
            # checks the endpoint (plain ws:// to loopback only); connects on the first request
            self.openpi_client = OpenpiClient(p.policy_endpoint, self.openpi_keys, timeout_s=p.request_timeout_s,
                                              api_key=key, dt=self.dt_ns / 1e9)
        elif p.openpi_keys is not None:
            raise ValueError("controller.openpi_keys is for a ws:// or wss:// policy_endpoint")
        if p.source == "policy" and not self.has_policy:
            raise ValueError(f"controller.policy: no node {p.policy!r} in the config and no policy_endpoint")
        if p.teleop is not None and p.teleop not in cfg.nodes:
            raise ValueError(f"controller.teleop: no node {p.teleop!r} in the config")
        if p.source == "teleop" and p.teleop is None:
            raise ValueError("controller.source = teleop needs controller.teleop (the teleop node name)")
        #: who drives (idle / policy / teleop / external / held) and the plan's generation
        self.modes = ModeMachine(p.source, p.autostart, self.has_policy, len(self.arm_names), p.hold_together)
        self.rx = self.ctx.receiver()
        self.teleop_sub = self.ctx.subscriber([p.teleop], ("teleop/",), history=200) if p.teleop else None
        self.teleop_seq = -1
        self.teleop_target: dict[str, np.ndarray] = {}  # arm -> (8,) pose + gripper, its base frame
        self.endpoint = (p.policy_endpoint or cfg.in_endpoint(p.policy, rd)) if self.has_policy else None
        self.lock = threading.Lock()
        self.delay = DelayEstimator(self.dt_ns, initial_steps=2)
        # per-stream capture-stamp corrections from latency calibration, when the setup has one
        self.latency_offsets: dict[str, int] = {}
        #: camera id -> T_base_camera (4, 4) from the setup's calibration (eye-to-hand), for .points
        self.extrinsics: dict[str, np.ndarray] = {}
        #: camera id -> PointCloudSpec, from the policy's spec
        self.point_specs: dict = {}
        if cfg.calibration is not None:
            from robot_stack.calibration import store

            self.latency_offsets = store.latency_offsets_ns(cfg.calibration.file)
            self.extrinsics = store.base_camera_extrinsics(cfg.calibration.file)
        kw = dict(m=p.ensemble_m, steps=p.ensemble_steps) if p.strategy == "ensemble" else {}
        self.strategy = STRATEGIES[p.strategy](self.dt_ns, int(p.exec_latency_s * 1e9), p.execute_horizon, **kw)
        self.replay_stamps = np.zeros(0, np.int64)  # a replayed action stream, fed to the arm piecewise
        self.replay_actions = np.zeros((0, self.action_dim))
        self.replay_pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # arm -> its replay part, until all came
        self.plan = CommittedPlan(self.action_dim, self.dt_ns // 2)  # the committed trajectory sent to the arms
        self.request_id = 0
        self._send_lock = threading.Lock()  # a schedule's merge into the mirror and its send stay in order
        self.stats = {k: 0.0 for k in ("requests", "chunks", "dropped_actions", "late_steps", "over_budget",
                                       "obs_holds", "errors", "teleop_steps",
                                       "bad_chunks", "stale_holds", "refused_chunks", "stale_chunks",
                                       "anchor_waits_timed_out", "chunks_from_rest")}
        self.inference_ms: list[float] = []
        self.e2e_ms: list[float] = []  # capture of the anchor frame -> its chunk's waypoints sent to the arm
        self.jumps_m: list[float] = []
        self.first_lead_max_mm: float | None = None  # largest first waypoint -> TCP of a plan from rest, mm (first arm)
        self.switch_jerk: list[float] = []  # commanded jerk at each switch, m/s^3 (CommittedPlan.jerk_at)
        #: latency breakdown of a chunk, ms: capture -> request -> policy -> plan -> sent to the arm
        self.stages = {k: collections.deque(maxlen=500) for k in ("frame_arrival", "frame_age", "assembly", "transport",
                                                                  "inference", "planning", "send")}
        self._stop = threading.Event()
        self._worker = self._fast_thread = None
        self.fast = None
        if p.fast is not None:
            from robot_stack.control.fast import FastCorrector, FastLayer

            self.fast = FastLayer(FastCorrector.load(p.fast), p.fast_lookahead_s)
            self.fast_ms: collections.deque = collections.deque(maxlen=2000)  # one tick's compute, ms
            self.fast_period_ms: collections.deque = collections.deque(maxlen=2000)
            self._fast_thread = threading.Thread(target=self._fast_loop, name="fast", daemon=True)
            if self.ctx.start_threads:
                self._fast_thread.start()
        self._client = None
        if self.has_policy:
            self._worker = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
            if self.ctx.start_threads:
                self._worker.start()

    # ------------------------------------------------------------------------- observation
    def _estopped_arms(self) -> list[str]:
        """The arms whose newest state says e-stop."""
        return [a for a in self.arm_names if (st := self._latest_state(a)) is not None and st.mode == "estop"]

    def _states(self, arm: str) -> list:
        """Recent RobotState messages of one arm node, oldest first."""
        hist = self.sub.history(RobotState.TOPIC)
        return [m for m in hist if m.source == arm] if self.multi else hist

    def _latest_state(self, arm: str):
        if not self.multi:
            return self.sub.latest(RobotState.TOPIC)
        return next((m for m in reversed(self.sub.history(RobotState.TOPIC)) if m.source == arm), None)

    def _arm_windows(self, obs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q, ee_pose, gripper_width) of every arm at the window's times, concatenated in arm order
        along the last axis (one arm: the observation's own)."""
        if not self.multi:
            return obs.q, obs.ee_pose, obs.gripper_width[:, None]
        from robot_stack.control.observation import interpolate_states

        tol = self.dt_ns // 2
        qs, ees, gs = [obs.q], [obs.ee_pose], [obs.gripper_width[:, None]]
        for a in self.arm_names[1:]:
            hist = self._states(a)
            if not hist:
                raise StaleStreamError(f"{RobotState.TOPIC} of {a}", "no robot state received")
            st = np.array([m.stamp_ns for m in hist], np.int64) - self.latency_offsets.get(RobotState.TOPIC, 0)
            if obs.times_ns[-1] - st[-1] > tol:
                raise StaleStreamError(f"{RobotState.TOPIC} of {a}",
                                       f"newest state is {(obs.times_ns[-1] - st[-1]) / 1e6:.0f} ms behind the window")
            q, ee, g = interpolate_states(st, np.array([m.q for m in hist]), np.array([m.ee_pose for m in hist]),
                                          np.array([m.gripper_width for m in hist]), obs.times_ns, max_extrapolation_ns=tol)
            qs.append(q)
            ees.append(ee)
            gs.append(np.asarray(g)[:, None])
        return np.concatenate(qs, 1), np.concatenate(ees, 1), np.concatenate(gs, 1)

    def _observation(self):
        frames = {cid: self.sub.history(CameraFrame.topic(cid)) for cid in self.cam_ids.values()}
        obs = assemble(frames, self._states(self.arm_names[0]), self.obs_horizon, self.dt_ns, now_ns(),
                       int(self.params.max_obs_age_s * 1e9), latency_offsets_ns=self.latency_offsets)
        q, ee, g = self._arm_windows(obs)
        arrays = {"ee_pose": ee.astype(np.float32), "q": q.astype(np.float32), "gripper_width": g.astype(np.float32)}
        arrays["state"] = np.concatenate([state_vector(ee[:, 7 * i:7 * i + 7], g[:, i])
                                          for i in range(len(self.arm_names))], axis=1)
        for cid in obs.color:
            size = self.params.image_size or self.image_sizes.get(cid)
            arrays[f"{cid}.color"] = camera_images(obs.color[cid], size)
            if cid in obs.depth:
                arrays[f"{cid}.depth"] = camera_images(obs.depth[cid], size)
            if f"{cid}.points" in self.obs_keys and cid in obs.depth:
                arrays[f"{cid}.points"] = self._clouds(cid, obs.depth[cid], frames[cid][-1])
        missing = set(self.obs_keys) - arrays.keys()
        if missing:
            raise StaleStreamError("observation", f"no stream provides {sorted(missing)}")
        return obs, {k: arrays[k] for k in self.obs_keys}

    def _clouds(self, cid: str, depth: np.ndarray, frame) -> np.ndarray:
        """(To, N, 3) float32 clouds of camera ``cid`` in the base frame (features.PointCloudSpec)."""
        spec = self.point_specs.get(cid)
        if spec is None:
            raise StaleStreamError(f"{cid}.points", "the policy's spec gives no point-cloud settings for this camera")
        if cid not in self.extrinsics:
            raise StaleStreamError(f"{cid}.points", "no T_base_camera for this camera in the setup's calibration file")
        return spec.clouds(depth, frame.K, frame.depth_scale, self.extrinsics[cid])

    # ------------------------------------------------------------------------- inference
    #: unexpected inference errors in a row that end the node (the launcher reports it)
    MAX_INFERENCE_FAILURES = 20

    def _inference_loop(self) -> None:
        """The inference thread. Transient trouble (a timeout, a refused request, stale streams)
        is counted and retried; an unexpected error is counted and retried too, but
        ``MAX_INFERENCE_FAILURES`` of them in a row, or a client that cannot be made (a bad
        endpoint, missing CURVE keys), end the node with a clear error: it never dies silently."""
        try:
            if self.openpi_client is not None:
                client = self.openpi_client
            else:
                client = self.ctx.request_client(self.endpoint, timeout_s=self.params.request_timeout_s)
        except Exception as e:
            self.fail(f"cannot reach the policy at {self.endpoint}: {type(e).__name__}: {e}")
            return
        failures = 0
        try:
            if self.openpi_client is None and not self._check_spec(client):
                return
            while not self._stop.is_set():
                try:
                    self._inference_once(client)
                    failures = 0
                except Exception as e:  # log, count, hold a period, go on, unless it keeps failing
                    self.stats["errors"] += 1
                    failures += 1
                    log.error("inference step failed (%d in a row): %s: %s", failures, type(e).__name__, e,
                              exc_info=failures == 1)
                    if failures >= self.MAX_INFERENCE_FAILURES:
                        self.fail(f"inference failed {failures} times in a row, last: {type(e).__name__}: {e}")
                        return
                    self._stop.wait(self.dt_ns / 1e9)
        finally:
            client.close()

    def inference_step(self) -> None:
        """One pass of the inference thread's loop, in the caller's thread (in-process tests, where
        the context starts no threads): the spec check on the first call, then one
        :meth:`_inference_once`."""
        if self._client is None:
            self._client = self.openpi_client or self.ctx.request_client(self.endpoint,
                                                                          timeout_s=self.params.request_timeout_s)
            if self.openpi_client is None and not self._check_spec(self._client):
                return
        self._inference_once(self._client)

    def _check_spec(self, client: RequestClient) -> bool:
        """Ask the policy for its spec (:class:`PolicySpec`) and compare it with this controller's
        setup: on a difference the node ends at start-up, naming each one (False); what the setup
        leaves open (obs_keys, obs_horizon, image sizes) is taken from the spec. A policy that
        does not answer within ``spec_timeout_s`` (still loading, or gone), or an older server that
        does not know the request, is logged and left to the per-request checks (True)."""
        from robot_stack.comm.messages import PolicySpec, SpecRequest
        from robot_stack.policies.serving import metadata_from_spec, spec_mismatch

        p = self.params
        deadline = now_ns() + int(p.spec_timeout_s * 1e9)
        while not self._stop.is_set():
            try:
                reply = client.request("spec", SpecRequest(request_id=0), timeout_s=min(2.0, p.spec_timeout_s))
            except TransportTimeout:
                if now_ns() > deadline:
                    log.warning("the policy at %s sent no spec within %.0f s: observations are checked per request",
                                self.endpoint, p.spec_timeout_s)
                    return True
                continue
            except RemoteError as e:
                log.warning("the policy at %s does not give its spec (%s): observations are checked per request",
                            self.endpoint, e)
                return True
            if not isinstance(reply, PolicySpec):
                log.warning("the policy at %s answered a spec request with %s", self.endpoint, reply.SCHEMA)
                return True
            try:
                md = metadata_from_spec(reply)
            except ValueError as e:  # it decoded, but does not hold together: the per-request checks remain
                log.warning("the policy at %s sent a malformed spec (%s): observations are checked per request",
                            self.endpoint, e)
                return True
            diffs = spec_mismatch(md, p.obs_keys, p.obs_horizon, p.image_size, list(self.cam_ids.values()),
                                  action_dim=self.action_dim)
            if diffs:
                self.fail("the policy's spec does not match this controller: " + "; ".join(diffs))
                return False
            # what the configuration leaves open comes from the spec
            self.obs_keys = list(p.obs_keys) if p.obs_keys is not None else list(md.obs_shapes)
            self.obs_horizon = p.obs_horizon or md.obs_horizon
            for k, (shape, _) in md.obs_shapes.items():
                cam, _, kind = k.rpartition(".")
                if kind in ("color", "depth") and cam:
                    self.image_sizes[cam] = (int(shape[0]), int(shape[1]))
            from robot_stack.control.features import PointCloudSpec

            self.point_specs = {c: PointCloudSpec.from_dict(d) for c, d in md.points.items()}
            no_ext = sorted(set(self.point_specs) - set(self.extrinsics))
            if no_ext:
                self.fail(f"the policy builds point clouds of cameras {no_ext}, but the setup's calibration file "
                          "has no T_base_camera for them (calibrate: robot-stack calibrate hand-eye, eye-to-hand)")
                return False
            log.info("policy spec: %s, To %d, H %d, %d-D %s actions at %.3f s", sorted(md.obs_shapes), md.obs_horizon,
                     md.horizon, md.action_dim, md.action_space, md.dt)
            return True
        return False

    def _inference_once(self, client: RequestClient) -> None:
        """One request: observe, ask the policy, plan and send the chunk (or hold and return)."""
        if not self.modes.policy_driving:
            self._stop.wait(0.01)
            return
        now = now_ns()
        if now < self.strategy.earliest_request_ns:  # at most one request per control period
            self._stop.wait((self.strategy.earliest_request_ns - now) / 1e9)
            return
        with self.lock:
            due = self.strategy.request_due(now, self.plan, self.delay.steps)
        if not due:  # sync: the executed part of the plan is not yet ending
            self._stop.wait(0.005)
            return
        if self.params.strategy != "sync" and self.params.request_on_frame:
            self._wait_for_new_anchor(now + int(self.params.max_obs_age_s * 1e9))
        generation = self.modes.generation
        t_assemble = now_ns()
        try:
            obs, arrays = self._observation()
        except StaleStreamError as e:
            self.stats["obs_holds"] += 1
            if self.stats["obs_holds"] <= 5 or self.stats["obs_holds"] % 50 == 0:
                log.warning("holding: %s", e)
            self._hold_arm(f"stale observation: {e}")
            self._stop.wait(self.dt_ns / 1e9)
            return
        t_send = now_ns()
        self.request_id += 1
        with self.lock:
            self.strategy.request_sent(t_send)
            prefix = self.strategy.request_prefix(obs.t_obs_ns, self.plan, self.delay.steps)
        req = ObservationWindow(request_id=self.request_id, obs=arrays,
                                obs_age_ns=(t_send - obs.times_ns).astype(np.int64),
                                committed_prefix=None if prefix is None else prefix[0],
                                prefix_frozen=-1 if prefix is None else prefix[1])
        self.stats["requests"] += 1
        try:
            chunk = client.request("infer", req)
        except RemoteError as e:
            self.stats["errors"] += 1
            log.error("policy refused the request: %s", e)
            self._stop.wait(0.2)
            return
        except TransportTimeout as e:
            self.stats["errors"] += 1
            log.error("%s", e)
            return
        arrival = now_ns()
        actions = np.asarray(chunk.actions, np.float64)
        bad = chunk_problem(actions, len(self.arm_names))
        if bad:
            self.stats["bad_chunks"] += 1
            if self.stats["bad_chunks"] <= 5 or self.stats["bad_chunks"] % 50 == 0:
                log.error("chunk refused (#%d): %s", self.stats["bad_chunks"], bad)
            return
        self.delay.add(arrival - obs.t_obs_ns)
        self.inference_ms.append((arrival - t_send) / 1e6)
        st = self.stages
        st["frame_age"].append((t_assemble - obs.t_obs_ns) / 1e6)  # newest frame's age when the request began
        st["assembly"].append((t_send - t_assemble) / 1e6)  # observation window + request build
        st["transport"].append((arrival - t_send - chunk.inference_ns) / 1e6)  # round trip less policy compute
        st["inference"].append(chunk.inference_ns / 1e6)
        self._on_chunk(actions, obs.t_obs_ns, arrival, int(round(chunk.dt * 1e9)), chunk.offset,
                       chunk.prefix_frozen if prefix is not None else -1, generation)

    def _wait_for_new_anchor(self, deadline_ns: int) -> None:
        """Frame-triggered requests (async, RTC, ensembling): a due request waits for the next
        frame of the camera that holds the observation anchor back (the anchor is the newest time
        all cameras reached, so that camera's next frame advances it), and starts as it arrives
        instead of at an arbitrary moment after the newest frame came in. Proprioception-only
        windows have a fresh anchor at every robot state and do not wait. Gives up at
        ``deadline_ns`` (``max_obs_age_s`` on: a stalled camera, which assembly then names)."""
        if not self.cam_ids:
            return
        latest = {cid: self.sub.latest(CameraFrame.topic(cid)) for cid in self.cam_ids.values()}
        if any(f is None for f in latest.values()):
            return  # assembly names the missing stream
        cid = min(latest, key=lambda c: latest[c].stamp_ns - self.latency_offsets.get(c, 0))
        left = (deadline_ns - now_ns()) / 1e9
        f = self.sub.wait_for(CameraFrame.topic(cid), left, newer_than_seq=latest[cid].seq) if left > 0 else None
        if f is None:
            self.stats["anchor_waits_timed_out"] += 1
        else:  # woken by the frame's arrival: its age now is the camera pipeline's latency
            self.stages["frame_arrival"].append((now_ns() - f.stamp_ns - self.latency_offsets.get(cid, 0)) / 1e6)

    def _hold_arm(self, why: str) -> None:
        """A stream the policy needs went stale: stop executing the current plan now (the arm
        brakes, jerk-limited, and holds) instead of running it open-loop to its end."""
        with self.lock:
            had_plan = self.plan.end_ns is not None and self.plan.end_ns > now_ns()
            self.plan.clear()
            self.strategy.reset()
            self.modes.drop_plan()
        if had_plan:
            self.stats["stale_holds"] += 1
            log.warning("arm%s told to hold: %s", "s" if self.multi else "", why)
            for client in self.arm_clients.values():
                try:
                    client.hold()
                except TransportTimeout as e:
                    self.stats["errors"] += 1
                    log.error("arm not reachable: %s", e)

    def _on_chunk(self, actions: np.ndarray, t_obs: int, arrival: int, dt_ns: int, offset: int,
                  frozen: int = -1, generation: int | None = None) -> None:
        if generation is not None and generation != self.modes.generation:
            # the plan was dropped (episode event, hold, intervention) while the policy was thinking
            self.stats["stale_chunks"] += 1
            return
        if not self.modes.policy_driving:
            return
        t0 = now_ns()
        with self.lock:
            self.stats["chunks"] += 1
            anchor = chunk_anchor_ns(t_obs, arrival, self.plan.end_ns) if self.params.start_from_rest else t_obs
            self.stats["chunks_from_rest"] += anchor != t_obs
            plan = self.strategy.on_chunk(actions, anchor, arrival, dt_ns, offset, frozen)
            sched = self.strategy.on_tick(now_ns()) if plan is None else None
        if plan is None:  # ensembling: the chunk joins the average, which goes out now (and each tick)
            if sched is not None:
                self.stages["planning"].append((now_ns() - t0) / 1e6)
                self._send(sched.stamps_ns, sched.actions, t_obs=t_obs)
            return
        if plan.refused:
            self.stats["refused_chunks"] += 1
            log.warning("chunk refused: %s", plan.refused)
            return
        self.stats["dropped_actions"] += plan.dropped
        self.stats["late_steps"] += plan.late_steps
        if plan.over_budget:
            self.stats["over_budget"] += 1
            log.warning("chunk over budget: every action was stale (inference %.0f ms)", (arrival - t_obs) / 1e6)
            return
        self.stages["planning"].append((now_ns() - t0) / 1e6)
        self._send(plan.stamps_ns, plan.actions, t_obs=t_obs)

    def _send(self, stamps: np.ndarray, actions: np.ndarray, origin: str = "policy", t_obs: int | None = None) -> None:
        """Send a schedule of (k, 8) actions to the arm; ``t_obs``: capture time of the chunk's
        newest frame, for the send stage and end-to-end latency."""
        with self._send_lock:
            self._send_locked(stamps, actions, origin, t_obs)

    def _send_locked(self, stamps: np.ndarray, actions: np.ndarray, origin: str, t_obs: int | None) -> None:
        t0 = now_ns()
        with self.lock:  # the committed plan merges the way the arm node merges
            from_rest = self.plan.end_ns is None or self.plan.end_ns < t0
            jump = self.plan.merge(stamps, actions, now_ns())
            jerk = self.plan.jerk_at(int(stamps[0])) if jump is not None else None
        if jump is not None:
            self.jumps_m.append(jump)
        if from_rest and origin == "policy" and t_obs is not None:  # nothing planned: the arm is at rest
            st = self._latest_state(self.arm_names[0])
            lead = float(np.linalg.norm(actions[0, :3] - np.asarray(st.ee_pose[:3]))) if st is not None else float("nan")
            self.first_lead_max_mm = max(self.first_lead_max_mm or 0.0, lead * 1e3)
            log.info("first schedule from rest: its chunk was observed %.0f ms ago, its first waypoint is %.0f ms "
                     "ahead and %.0f mm from the TCP", (t0 - t_obs) / 1e6, (int(stamps[0]) - t0) / 1e6, lead * 1e3)
        if jerk is not None:
            self.switch_jerk.append(jerk)
        if self.fast is not None and origin == "policy":
            actions = self.fast.shift(actions)  # the plan's next steps keep the fast layer's correction
        for i, arm in enumerate(self.arm_names):  # every arm, the same stamps (lockstep)
            a = actions[:, 8 * i:8 * i + 8]
            poses = a[:, :7].copy()
            poses[:, 3:] /= np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
            gripper = np.clip(a[:, 7], 0, 1) if a.shape[1] > 7 else None
            self._dispatch(stamps, poses, "ee", gripper, origin, arm)
        if t_obs is not None:
            t1 = now_ns()
            self.stages["send"].append((t1 - t0) / 1e6)
            self.e2e_ms.append((t1 - t_obs) / 1e6)

    def _dispatch(self, stamps: np.ndarray, positions: np.ndarray, space: str, gripper, origin: str,
                  arm: str | None = None) -> None:
        """Send a schedule to an arm node (default the first) and publish it on ``controller/action``
        (for the recorder; with ``arm`` set when this controller drives several)."""
        arm = arm or self.arm_names[0]
        msg = WaypointSchedule(stamps_ns=np.asarray(stamps, np.int64), positions=positions, space=space,
                               gripper=gripper, origin=origin, arm=arm if self.multi else "")
        try:
            self.arm_clients[arm].send_schedule(msg.stamps_ns, positions, space=space, gripper=gripper, origin=origin)
            self.pub.publish(WaypointSchedule.EXECUTED_TOPIC, msg)
        except TransportTimeout as e:
            self.stats["errors"] += 1
            log.error("arm not reachable: %s", e)

    # ------------------------------------------------------------------------- fast layer
    def _fast_loop(self) -> None:
        """The fast layer at its own rate (``FastLayer``); its schedules go out as origin "fast"."""
        period = self.fast.period_ns
        nxt, last = now_ns(), None
        while not self._stop.is_set():
            nxt += period
            delay = (nxt - now_ns()) / 1e9
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = now_ns()  # fell behind: re-anchor, no burst
            t = now_ns()
            if last is not None:
                self.fast_period_ms.append((t - last) / 1e6)
            last = t
            self.guarded("fast_tick", self._fast_tick, t)

    def _fast_tick(self, t: int) -> None:
        if not self.modes.policy_driving:
            self.fast.reset()
            return
        with self.lock:
            stamps, acts = self.plan.stamps_ns.copy(), self.plan.actions.copy()
        out = self.fast.tick(t, self.sub.latest(RobotState.TOPIC), stamps, acts)
        self.fast_ms.append((now_ns() - t) / 1e6)
        if out is None:
            return
        stamps, actions = out
        with self._send_lock:
            poses = actions[:, :7].copy()
            poses[:, 3:] /= np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
            self._dispatch(stamps, poses, "ee", np.clip(actions[:, 7], 0, 1), "fast")

    # ------------------------------------------------------------------------- control step
    #: a replayed action stream goes to the arm this far ahead of its waypoints' times, ns
    REPLAY_LEAD_NS = 1_000_000_000

    def _events(self) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("controller_input", self._on_event, item[1])

    def _on_event(self, ev) -> None:
        if isinstance(ev, WaypointSchedule):
            if ev.space != "ee" or ev.positions.shape[1] != 7:
                raise ValueError(f"replay schedules are TCP poses (N, 7), got {ev.space} {ev.positions.shape}")
            arm = ev.arm or self.arm_names[0]
            if arm not in self.arm_names:
                raise ValueError(f"replay schedule for arm {ev.arm!r}: this controller drives {self.arm_names}")
            if not self.modes.enabled:
                return
            g = np.ones(len(ev.stamps_ns)) if ev.gripper is None else np.asarray(ev.gripper)
            self.replay_pending[arm] = (np.asarray(ev.stamps_ns, np.int64), np.c_[ev.positions, g])
            if len(self.replay_pending) < len(self.arm_names):
                return  # several arms: every arm's part first (lockstep: one schedule per arm, the same stamps)
            parts = [self.replay_pending.pop(a) for a in self.arm_names]
            if any(not np.array_equal(p[0], parts[0][0]) for p in parts[1:]):
                raise ValueError("replay schedules of the arms differ in their stamps; lockstep needs the same")
            # a replayed action stream goes the same way as a policy's actions
            self.replay_stamps = parts[0][0]
            self.replay_actions = np.concatenate([p[1] for p in parts], axis=1)
            self._replay_step()
            return
        if isinstance(ev, EpisodeEvent):
            self._episode_event(ev)

    def _replay_step(self) -> None:
        """Send the next part of a replayed stream (the arm takes schedules up to
        ``safety.max_ahead_s`` ahead and ``max_waypoints`` long, so a long episode goes piecewise)."""
        if not len(self.replay_stamps):
            return
        n = int(np.searchsorted(self.replay_stamps, now_ns() + self.REPLAY_LEAD_NS, side="right"))
        if n == 0:  # the next waypoint is more than the lead ahead: it goes out on a later step
            return
        stamps, acts = self.replay_stamps[:n], self.replay_actions[:n]
        self.replay_stamps, self.replay_actions = self.replay_stamps[n:], self.replay_actions[n:]
        self._send(stamps, acts, origin="replay")

    def _episode_event(self, ev: EpisodeEvent) -> None:
        self.modes.episode(ev.kind)
        self._clear_plan()
        log.info("episode event %s: execution %s", ev.kind, "on" if self.modes.enabled else "off")

    def _clear_plan(self) -> None:
        self.replay_stamps = np.zeros(0, np.int64)
        self.replay_actions = np.zeros((0, self.action_dim))
        self.replay_pending = {}
        with self.lock:
            self.plan.clear()
            self.strategy.reset()
            self.modes.drop_plan()
            if self.fast is not None:
                self.fast.reset()
        self.teleop_target = {}

    def _teleop_step(self) -> None:
        """Apply new teleop commands: buttons (intervene/release/estop) always, motion when teleop drives."""
        cmds = [m for m in self.teleop_sub.history(TeleopCommand.TOPIC) if m.seq > self.teleop_seq]
        if not cmds:
            return
        self.teleop_seq = cmds[-1].seq
        for c in cmds:
            if "estop" in c.buttons:
                for name, client in self.arm_clients.items():
                    try:
                        client.estop("teleop e-stop button")
                    except TransportTimeout as e:  # the others still get theirs
                        self.stats["errors"] += 1
                        log.error("e-stop could not reach arm %s: %s", name, e)
                log.warning("e-stop from teleop")
            if "intervene" in c.buttons and self.modes.intervene():
                self._clear_plan()
            elif "release" in c.buttons and self.modes.release():
                self._clear_plan()
        if not self.modes.teleop_driving:
            return
        fresh = [c for c in cmds if now_ns() - c.stamp_ns < self.params.teleop_timeout_s * 1e9]
        if not fresh:
            return
        per_arm = {a: [c for c in fresh if (c.arm or self.arm_names[0]) == a] for a in self.arm_names}
        unknown = {c.arm for c in fresh if c.arm and c.arm not in per_arm}
        if unknown:
            self.stats["errors"] += 1
            log.warning("teleop commands for arms this controller does not drive were ignored: %s", sorted(unknown))
        t = now_ns() + self.dt_ns + int(self.params.exec_latency_s * 1e9)
        states = {a: self._latest_state(a) for a in self.arm_names}
        if any(st is None for st in states.values()):
            return
        joint_arms = []
        for arm, mine in per_arm.items():
            if mine and mine[-1].kind == "joint":  # leader arm: joint-space waypoint, same arm-node safety
                c = mine[-1]
                joint_arms.append(arm)
                self.teleop_target.pop(arm, None)
                self._dispatch(np.array([t]), np.asarray(c.value, float)[None], "joint",
                               np.array([np.clip(c.gripper, 0, 1)]), "teleop", arm)
                continue
            target = self.teleop_target.get(arm)
            if target is None:  # from where the arm is (an arm no command moved yet holds there)
                target = np.r_[np.asarray(states[arm].ee_pose, float), 1.0]
            self.teleop_target[arm] = apply_commands(target, mine)
        self.stats["teleop_steps"] += 1
        if not joint_arms:  # every arm its target, the same stamp (lockstep), through the committed plan
            self._send(np.array([t], np.int64), np.concatenate([self.teleop_target[a] for a in self.arm_names])[None],
                       origin="teleop")
            return
        for arm in self.arm_names:  # mixed: the end-effector arms that were moved, each on its own
            if arm not in joint_arms and per_arm[arm]:
                tg = self.teleop_target[arm]
                self._dispatch(np.array([t]), tg[None, :7], "ee", tg[7:8], "teleop", arm)

    def step(self) -> None:
        if self._fatal is None:
            for client in self.arm_clients.values():
                try:
                    client.heartbeat()  # from the control loop itself: a hung loop reads as silent
                except TransportTimeout:
                    self.stats["errors"] += 1
        self._events()
        self.modes.arms_in_estop(self._estopped_arms())
        if self.modes.held:  # every arm holds until the e-stop is released (the others' plans are dropped)
            self._hold_arm(f"arm {', '.join(self.modes.estopped)} is in e-stop")
            return
        self._replay_step()
        if self.teleop_sub is not None:
            self._teleop_step()
        if not self.modes.policy_driving:
            return
        with self.lock:
            sched = self.strategy.on_tick(now_ns())
        if sched is not None:
            self._send(sched.stamps_ns, sched.actions)

    def metrics(self) -> dict[str, float]:
        m = dict(self.stats)
        m.update(interventions=float(self.modes.interventions), episodes=float(self.modes.episodes),
                 refused_interventions=float(self.modes.refused_interventions))
        m["delay_steps"] = float(self.delay.steps)
        if self.inference_ms:
            a = np.array(self.inference_ms[-500:])
            m.update(inference_p50_ms=float(np.percentile(a, 50)), inference_p99_ms=float(np.percentile(a, 99)))
        if self.e2e_ms:
            a = np.array(self.e2e_ms[-500:])
            m.update(e2e_p50_ms=float(np.percentile(a, 50)), e2e_p99_ms=float(np.percentile(a, 99)))
        for k, v in self.stages.items():
            if v:
                a = np.array(v)
                m.update({f"stage_{k}_p50_ms": float(np.percentile(a, 50)), f"stage_{k}_p99_ms": float(np.percentile(a, 99))})
        if self.jumps_m:
            j = np.array(self.jumps_m)
            m.update(switch_jump_mean_mm=float(j.mean() * 1e3), switch_jump_max_mm=float(j.max() * 1e3),
                     switches=float(len(j)))
        if self.first_lead_max_mm is not None:  # the arm node refuses a first waypoint beyond its max_jump_ee
            m["first_lead_max_mm"] = self.first_lead_max_mm
        if self.fast is not None:
            m.update({f"fast_{k}": float(v) for k, v in self.fast.stats.items()})
            m["fast_correction_mm"] = float(np.linalg.norm(self.fast.correction) * 1e3)
            if self.fast_ms:
                m.update(fast_compute_p99_ms=float(np.percentile(self.fast_ms, 99)),
                         fast_period_p50_ms=float(np.percentile(self.fast_period_ms, 50)) if self.fast_period_ms else 0.0,
                         fast_period_p99_ms=float(np.percentile(self.fast_period_ms, 99)) if self.fast_period_ms else 0.0)
        if self.switch_jerk:  # commanded waypoint jerk at the switches, m/s^3
            j = np.array(self.switch_jerk)
            m.update(switch_jerk_mean=float(j.mean()), switch_jerk_p99=float(np.percentile(j, 99)))
        return m

    def shutdown(self) -> None:
        self._stop.set()
        for th in (getattr(self, "_worker", None), getattr(self, "_fast_thread", None)):
            if th is not None and th.is_alive():
                th.join(timeout=3)
        for s in ("rx", "teleop_sub"):
            if getattr(self, s, None) is not None:
                getattr(self, s).close()
        for client in getattr(self, "arm_clients", {}).values():
            client.close()
        if hasattr(self, "sub"):
            self.sub.close()


