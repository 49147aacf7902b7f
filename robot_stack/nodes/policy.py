"""Policy node: answers observation windows with action chunks over request/reply.

Binds a REP socket at its input endpoint (``ipc://`` by default; a ``tcp://`` endpoint for a remote
GPU server, with CURVE when it leaves localhost). Every request is validated before the model sees
it: schema (codec), keys/shapes/dtypes (policy metadata), staleness (the window's ages, which are
durations and need no shared clock). A bad request gets an :class:`ErrorReply` and the node stays up.

Dynamic batching (``batch: {max_batch: B, window_ms: W}``): requests of many controllers that
arrive within W ms of the first one (or until B are held) run as one batch
(:meth:`robot_stack.policies.base.Policy.predict_batch`); each request is checked on its own, gets
its own reply, noise and RTC prefix, and a bad request is answered alone and never fails the others.
``max_batch: 1`` (the default) answers one request at a time.

With ``openpi:`` set, the node also serves openpi's websocket policy protocol
(:mod:`robot_stack.comm.openpi`) on loopback, so an unmodified ``openpi-client`` can drive it; its
requests go through the same checks and the same policy (one at a time, under a lock).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robot_stack.runtime.devices import POLICY_BACKENDS
from robot_stack.comm.messages import ActionChunk, ErrorReply, Message, ObservationWindow, SpecRequest
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.node import Node, NodeParams
from robot_stack.comm.openpi import FROZEN_KEY, PREFIX_KEY, OpenpiServer, OpenpiServerConfig
from robot_stack.comm.transport import BatchReplyServer, PendingRequest
from robot_stack.policies.serving import check_request, committed_prefix, frozen_count, request_size_cap, spec_message

log = logging.getLogger(__name__)


PolicyBackendConfig, _backend_field = POLICY_BACKENDS.field("goto")


class BatchParams(BaseModel):
    """Dynamic batching of the node's ZeroMQ requests (see the module doc)."""

    model_config = ConfigDict(extra="forbid")
    max_batch: int = Field(1, ge=1, le=1024, description="most requests per batch (1: no batching)")
    window_ms: float = Field(2.0, ge=0, le=1000, description="longest wait after a batch's first request, ms")


class PolicyParams(NodeParams):
    backend: PolicyBackendConfig = _backend_field
    delay_s: float = Field(0.0, ge=0, description="injected inference delay before every chunk, s (benchmarks)")
    max_obs_age_s: float = Field(1.0, gt=0, description="an observation window older than this is refused, s")
    rate_hz: float = Field(1000.0, gt=0, description="request polling rate, Hz")
    fault: Literal["none", "nan", "limit", "jump", "empty", "flip", "table", "fold"] = Field(
        "none", description="fault injection (HIL tests, bench/faults.py): corrupt every chunk this way"
    )
    openpi: OpenpiServerConfig | None = Field(
        None, description="also serve openpi's websocket policy protocol (loopback; keys: openpi key -> ours)"
    )
    batch: BatchParams = Field(default_factory=BatchParams, description="dynamic batching of requests")
    threads: int | None = Field(
        1,
        ge=1,
        description="torch / ONNX Runtime CPU threads (None: library default). "
        "One avoids fighting the servo loop for cores on small machines",
    )


#: "fold": a TCP pose inside the Panda's box whose IK solution, tracked from home, folds the elbow
#: (link2 into link5), and the distance from home over which the gripper turns toward it, m
FOLD_POSE = np.array([0.2432, 0.1523, 0.2588, 0.0469, 0.6839, -0.1706, 0.7078])
FOLD_FROM_M = 0.245


def inject_fault(actions: np.ndarray, fault: str) -> np.ndarray:
    """A chunk (H, 8) [x y z qx qy qz qw gripper] corrupted the way a broken policy would:
    "nan" (NaN in the middle), "limit" (the TCP 2 m away, outside any workspace), "jump" (the
    whole chunk shifted 0.3 m), "empty" (no actions), "flip" (orientation turned 180 deg).

    Two faults keep every check but the collision checks satisfied (the TCP inside the Panda's
    workspace box, no jump, TCP speeds under the limits), from the chunk's first action on:
    "table" descends 0.2 m/s to 3 cm over the table while the gripper pitches forward with
    falling height (90 deg at 5 cm), so the hand and the wrist go into the table; "fold" moves the
    TCP at 0.05 m/s to :data:`FOLD_POSE`, turning the gripper toward its orientation with the
    distance covered, which folds the elbow onto the shoulder. Stateless: the orientation is a
    function of the position, so consecutive chunks agree."""
    a = actions.copy()
    if fault == "nan":
        a[len(a) // 2, 2] = np.nan
    elif fault == "limit":
        a[:, 0] += 2.0
    elif fault == "jump":
        a[:, 1] += 0.3
    elif fault == "empty":
        a = a[:0]
    elif fault == "flip":  # q -> q * (1, 0, 0, 0): 180 deg about x
        x, y, z, w = a[:, 3].copy(), a[:, 4].copy(), a[:, 5].copy(), a[:, 6].copy()
        a[:, 3], a[:, 4], a[:, 5], a[:, 6] = w, z, -y, -x
    elif fault == "table" and len(a):
        from scipy.spatial.transform import Rotation

        p0 = a[0, :3].astype(float)
        d = np.array([0.55, p0[1], 0.03]) - p0  # forward and down, 0.2 m/s at the policy's 0.1 s
        dist = float(np.linalg.norm(d))
        a[:, :3] = p0 + np.minimum(0.02 * np.arange(len(a)), dist)[:, None] * d / max(dist, 1e-9)
        pitch = -0.5 * np.pi * np.clip((0.30 - a[:, 2]) / (0.30 - 0.05), 0.0, 1.0)
        R = Rotation.from_euler("y", pitch[:, None]) * Rotation.from_quat(a[:, 3:7].astype(float))
        a[:, 3:7] = R.as_quat()
    elif fault == "fold" and len(a):
        from scipy.spatial.transform import Rotation, Slerp

        p0 = a[0, :3].astype(float)
        d = FOLD_POSE[:3] - p0
        dist = float(np.linalg.norm(d))
        a[:, :3] = p0 + np.minimum(0.005 * np.arange(len(a)), dist)[:, None] * d / max(dist, 1e-9)
        start = Rotation.from_quat(a[0, 3:7].astype(float))
        s = np.clip(1.0 - np.linalg.norm(a[:, :3] - FOLD_POSE[:3], axis=1) / FOLD_FROM_M, 0.0, 1.0)
        a[:, 3:7] = Slerp([0.0, 1.0], Rotation.concatenate([start, Rotation.from_quat(FOLD_POSE[3:])]))(s).as_quat()
    return a


class PolicyNode(Node):
    """Serves one policy."""

    Params = PolicyParams

    def configure(self) -> None:
        if self.params.threads is not None and self.params.backend.type not in ("goto", "oracle"):
            import torch

            torch.set_num_threads(self.params.threads)
        self.policy = self.params.backend.build(self.ctx, self.params)
        nc = self.ctx.node_config
        curve = nc.curve_server.build() if nc.curve_server else None
        self.max_request_bytes = request_size_cap(self.policy.metadata)  # refused unread beyond it
        self.server = self.own(
            BatchReplyServer(
                self.ctx.config.in_endpoint(self.name, self.ctx.run_dir),
                self.name,
                curve=curve,
                max_msg_bytes=self.max_request_bytes,
            )
        )
        self.inference_ms: collections.deque[float] = collections.deque(maxlen=500)  # the recent ones
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=500)
        self.requests = 0  # answered with a chunk
        self.batches = 0
        self.rejected = 0
        self.non_finite = 0  # inferences whose actions were not all finite (refused)
        self._lock = threading.Lock()  # the ZeroMQ loop and the openpi thread share the policy
        self.openpi = None
        if self.params.openpi is not None:
            o = self.params.openpi
            key = None
            if o.api_key_env is not None:
                key = os.environ.get(o.api_key_env)
                if not key:
                    raise ValueError(f"openpi.api_key_env: environment variable {o.api_key_env} is not set")
            self.openpi = self.own(
                OpenpiServer(
                    o.host,
                    o.port,
                    self._openpi_metadata(),
                    self._openpi_infer,
                    api_key=key,
                    max_size=self.max_request_bytes,
                )
            )
            log.info("openpi websocket policy server on ws://%s:%d", o.host, self.openpi.port)

    def _openpi_metadata(self) -> dict:
        """The spec an openpi client receives on connect (our policy's metadata, in openpi keys)."""
        md = self.policy.metadata
        theirs = {ours: k for k, ours in self.params.openpi.keys.items()}
        return {
            "server": "robot_stack",
            "policy": self.params.backend.type,
            "observation": {
                theirs.get(k, k): {"shape": list(shape), "dtype": dtype, "ours": k}
                for k, (shape, dtype) in md.obs_shapes.items()
            },
            "obs_horizon": md.obs_horizon,
            "action_horizon": md.horizon,
            "action_dim": md.action_dim,
            "action_space": md.action_space,
            "dt": md.dt,
            "offset": md.offset,
            "supports_prefix": md.supports_prefix,
        }

    def _openpi_infer(self, obs: dict) -> tuple[dict | None, str | None]:
        """One openpi request: map keys, give single frames the To axis, cast floats to the
        policy's dtypes, then the same checks and inference as a ZeroMQ request."""
        md = self.policy.metadata
        arrays = {}
        for k, a in self.params.openpi.to_ours(obs).items():
            a = np.asarray(a)
            spec = md.obs_shapes.get(k)
            if spec is not None:
                shape, dtype = spec
                if a.ndim == len(shape):  # one frame: a stateless server repeats it over To
                    a = np.repeat(a[None], md.obs_horizon, axis=0)
                if a.dtype.kind == "f" and np.dtype(dtype).kind == "f":
                    a = a.astype(dtype)
            arrays[k] = a
        prefix = obs.get(PREFIX_KEY)
        msg = ObservationWindow(
            request_id=0,
            obs=arrays,
            obs_age_ns=np.zeros(0, np.int64),
            committed_prefix=None if prefix is None else np.asarray(prefix, np.float32),
            prefix_frozen=int(obs.get(FROZEN_KEY, -1)),
            prompt=str(obs.get("prompt", "")),
        )
        reply = self.handle("infer", msg)
        if isinstance(reply, ErrorReply):
            return None, f"{reply.code}: {reply.reason}"
        return {
            "actions": np.asarray(reply.actions, np.float32),
            "server_timing": {"infer_ms": reply.inference_ns / 1e6},
            FROZEN_KEY: reply.prefix_frozen,
        }, None

    def handle(self, topic: str, msg: Message) -> Message:
        """Answer one request (ZeroMQ or openpi): an ActionChunk, or an ErrorReply naming why not."""
        return self.handle_batch([msg])[0]

    def handle_batch(self, msgs: list[Message]) -> list[Message]:
        """Answer requests as one batch: each is checked alone (a bad one gets its ErrorReply), the
        valid ones run through ``predict_batch`` together; if the batch raises, each valid request
        is retried alone, so only a request that fails by itself gets a ``handler_error``."""
        replies: list[Message | None] = [
            spec_message(self.policy.metadata, m.request_id) if isinstance(m, SpecRequest) else self._check(m)
            for m in msgs
        ]
        valid = [i for i, r in enumerate(replies) if r is None]
        if not valid:
            return replies
        t_recv = now_ns()
        with self._lock:
            if hasattr(self.policy, "observed_at"):  # (the oracle: each request's observation time, ns)
                self.policy.observed_at([t_recv - int(np.asarray(msgs[i].obs_age_ns)[-1]) for i in valid])
            t0 = time.perf_counter_ns()
            if self.params.delay_s:
                time.sleep(self.params.delay_s)
            try:
                out = self.policy.predict_batch(
                    [msgs[i].obs for i in valid],
                    [self._prefix(msgs[i]) for i in valid],
                    [frozen_count(msgs[i]) for i in valid],
                )
            except Exception as e:
                if len(valid) == 1:
                    log.exception("inference failed")
                    out = [e]
                else:
                    log.warning(
                        "a batch of %d failed (%s: %s): answering its requests one by one",
                        len(valid),
                        type(e).__name__,
                        e,
                    )
                    out = []
                    for i in valid:
                        try:
                            out.append(
                                self.policy.predict_batch(
                                    [msgs[i].obs], [self._prefix(msgs[i])], [frozen_count(msgs[i])]
                                )[0]
                            )
                        except Exception as e1:
                            out.append(e1)
            dt_ns = time.perf_counter_ns() - t0
        self.batch_sizes.append(len(valid))
        self.batches += 1
        md = self.policy.metadata
        for i, res in zip(valid, out):
            m = msgs[i]
            if isinstance(res, Exception):
                replies[i] = ErrorReply(
                    request_id=m.request_id, code="handler_error", reason=f"{type(res).__name__}: {res}"
                )
                continue
            actions, frozen = res
            if not np.all(np.isfinite(actions)):  # no reply carries a non-finite action
                self.non_finite += 1
                log.error(
                    "policy answered %d non-finite actions: refused",
                    int(np.size(actions) - np.count_nonzero(np.isfinite(actions))),
                )
                replies[i] = ErrorReply(
                    request_id=m.request_id, code="non_finite_actions", reason="the policy's actions are not all finite"
                )
                continue
            if self.params.fault != "none":  # (after the check: the campaign's stand-in for a broken remote server)
                actions = inject_fault(np.array(actions, np.float32), self.params.fault)
            self.inference_ms.append(dt_ns / 1e6)
            self.requests += 1
            replies[i] = ActionChunk(
                request_id=m.request_id,
                actions=np.asarray(actions, np.float32),
                dt=md.dt,
                offset=md.offset,
                inference_ns=dt_ns,
                prefix_frozen=-1 if self._prefix(m) is None else int(frozen),
            )
        return replies

    @staticmethod
    def _prefix(msg: ObservationWindow) -> np.ndarray | None:
        return committed_prefix(msg)

    def _check(self, msg: Message) -> ErrorReply | None:
        """None for a request the policy may see; else the ErrorReply that names what is wrong."""
        err = check_request(msg, self.policy.metadata, self.params.max_obs_age_s)
        if err is not None:
            self.rejected += 1
        return err

    def step(self) -> None:
        b = self.params.batch
        reqs = self.server.collect(b.window_ms / 1e3, b.max_batch, timeout_s=0.0)
        if reqs:
            self._answer(reqs)

    def _answer(self, reqs: list[PendingRequest]) -> None:
        try:
            replies = self.handle_batch([r.msg for r in reqs])
        except Exception as e:  # a bug outside the policy: answer every request, log, stay up
            log.exception("answering a batch failed")
            replies = [
                ErrorReply(
                    request_id=int(r.msg.request_id) if isinstance(r.msg, (ObservationWindow, SpecRequest)) else 0,
                    code="handler_error",
                    reason=f"{type(e).__name__}: {e}",
                )
                for r in reqs
            ]
        for r, reply in zip(reqs, replies):
            self.server.reply(r, reply)

    def metrics(self) -> dict[str, float]:
        m = {
            "requests": float(self.requests),
            "rejected": float(self.rejected),
            "non_finite_actions": float(self.non_finite),
            "decode_errors": float(self.server.stats.decode_errors),
        }
        if self.openpi is not None:
            m.update(
                openpi_requests=float(self.openpi.requests),
                openpi_errors=float(self.openpi.errors),
                openpi_unauthorized=float(self.openpi.unauthorized),
            )
        if self.inference_ms:
            a = np.array(self.inference_ms)
            m.update(inference_p50_ms=float(np.percentile(a, 50)), inference_p99_ms=float(np.percentile(a, 99)))
        if self.batch_sizes:
            bs = np.array(self.batch_sizes)
            m.update(batches=float(self.batches), batch_mean=float(bs.mean()), batch_max=float(bs.max()))
        return m
