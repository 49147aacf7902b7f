"""Policy node: answers observation windows with action chunks over request/reply.

Binds a REP socket at its input endpoint (``ipc://`` by default; a ``tcp://`` endpoint for a remote
GPU server, with CURVE when it leaves localhost). Every request is validated before the model sees
it: schema (codec), keys/shapes/dtypes (policy metadata), staleness (the window's ages, which are
durations and need no shared clock). A bad request gets an :class:`ErrorReply` and the node stays up.

With ``openpi:`` set, the node also serves openpi's websocket policy protocol
(:mod:`robot_stack.comm.openpi`) on loopback, so an unmodified ``openpi-client`` can drive it; its
requests go through the same checks and the same policy (one at a time, under a lock).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.devices import POLICY_BACKENDS
from robot_stack.comm.messages import ActionChunk, ErrorReply, Message, ObservationWindow
from robot_stack.runtime.node import Node, NodeParams
from robot_stack.comm.openpi import FROZEN_KEY, PREFIX_KEY, OpenpiServer, OpenpiServerConfig
from robot_stack.comm.transport import ReplyServer

log = logging.getLogger(__name__)


PolicyBackendConfig, _backend_field = POLICY_BACKENDS.field("goto")


class PolicyParams(NodeParams):
    backend: PolicyBackendConfig = _backend_field
    delay_s: float = Field(0.0, ge=0, description="injected inference delay before every chunk, s (benchmarks)")
    max_obs_age_s: float = Field(1.0, gt=0)
    rate_hz: float = Field(1000.0, gt=0)
    fault: Literal["none", "nan", "limit", "jump", "empty", "flip"] = Field(
        "none", description="fault injection (HIL tests, bench/faults.py): corrupt every chunk this way")
    openpi: OpenpiServerConfig | None = Field(
        None, description="also serve openpi's websocket policy protocol (loopback; keys: openpi key -> ours)")
    threads: int | None = Field(1, ge=1, description="torch / ONNX Runtime CPU threads (None: library default). "
                                                     "One avoids fighting the servo loop for cores on small machines")


def inject_fault(actions: np.ndarray, fault: str) -> np.ndarray:
    """A chunk (H, 8) [x y z qx qy qz qw gripper] corrupted the way a broken policy would:
    "nan" (NaN in the middle), "limit" (the TCP 2 m away, outside any workspace), "jump" (the
    whole chunk shifted 0.3 m), "empty" (no actions), "flip" (orientation turned 180 deg)."""
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
    return a


class PolicyNode(Node):
    """Serves one policy."""

    Params = PolicyParams

    def configure(self) -> None:
        if self.params.threads is not None and self.params.backend.type != "goto":
            import torch

            torch.set_num_threads(self.params.threads)
        self.policy = self.params.backend.build(self.ctx, self.params)
        nc = self.ctx.node_config
        curve = nc.curve_server.build() if nc.curve_server else None
        self.server = ReplyServer(self.ctx.config.in_endpoint(self.name, self.ctx.run_dir), self.name, curve=curve)
        self.inference_ms: list[float] = []
        self.rejected = 0
        self._lock = threading.Lock()  # the ZeroMQ loop and the openpi thread share the policy
        self.openpi = None
        if self.params.openpi is not None:
            o = self.params.openpi
            key = None
            if o.api_key_env is not None:
                key = os.environ.get(o.api_key_env)
                if not key:
                    raise ValueError(f"openpi.api_key_env: environment variable {o.api_key_env} is not set")
            self.openpi = OpenpiServer(o.host, o.port, self._openpi_metadata(), self._openpi_infer, api_key=key)
            log.info("openpi websocket policy server on ws://%s:%d", o.host, self.openpi.port)

    def _openpi_metadata(self) -> dict:
        """The spec an openpi client receives on connect (our policy's metadata, in openpi keys)."""
        md = self.policy.metadata
        theirs = {ours: k for k, ours in self.params.openpi.keys.items()}
        return {"server": "robot_stack", "policy": self.params.backend.type,
                "observation": {theirs.get(k, k): {"shape": list(shape), "dtype": dtype, "ours": k}
                                for k, (shape, dtype) in md.obs_shapes.items()},
                "obs_horizon": md.obs_horizon, "action_horizon": md.horizon, "action_dim": md.action_dim,
                "action_space": md.action_space, "dt": md.dt, "offset": md.offset,
                "supports_prefix": md.supports_prefix}

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
        msg = ObservationWindow(request_id=0, obs=arrays, obs_age_ns=np.zeros(0, np.int64),
                                committed_prefix=None if prefix is None else np.asarray(prefix, np.float32),
                                prefix_frozen=int(obs.get(FROZEN_KEY, -1)))
        reply = self.handle("infer", msg)
        if isinstance(reply, ErrorReply):
            return None, f"{reply.code}: {reply.reason}"
        return {"actions": np.asarray(reply.actions, np.float32),
                "server_timing": {"infer_ms": reply.inference_ns / 1e6}, FROZEN_KEY: reply.prefix_frozen}, None

    def handle(self, topic: str, msg: Message) -> Message:
        """Answer one request (ZeroMQ or openpi): an ActionChunk, or an ErrorReply naming why not."""
        with self._lock:
            return self._handle(msg)

    def _handle(self, msg: Message) -> Message:
        from robot_stack.policies.base import ObservationError

        if not isinstance(msg, ObservationWindow):
            self.rejected += 1
            return ErrorReply(code="bad_request", reason=f"expected observation_window, got {msg.SCHEMA}")
        md = self.policy.metadata
        try:
            md.validate(msg.obs)
        except ObservationError as e:
            self.rejected += 1
            return ErrorReply(request_id=msg.request_id, code="bad_observation", reason=str(e))
        if len(msg.obs_age_ns) and msg.obs_age_ns.max() > self.params.max_obs_age_s * 1e9:
            self.rejected += 1
            return ErrorReply(request_id=msg.request_id, code="stale",
                              reason=f"observation is {msg.obs_age_ns.max() / 1e6:.0f} ms old "
                                     f"(max {self.params.max_obs_age_s * 1e3:.0f} ms)")
        prefix = None if msg.committed_prefix is None or len(msg.committed_prefix) == 0 else np.asarray(msg.committed_prefix)
        if prefix is not None and prefix.shape[1] != md.action_dim:
            self.rejected += 1
            return ErrorReply(request_id=msg.request_id, code="bad_observation",
                              reason=f"committed prefix has {prefix.shape[1]} dims, policy acts in {md.action_dim}")
        t0 = time.perf_counter_ns()
        if self.params.delay_s:
            time.sleep(self.params.delay_s)
        frozen = None if msg.prefix_frozen < 0 else msg.prefix_frozen
        actions = self.policy.predict(msg.obs, prefix, frozen)
        if self.params.fault != "none":
            actions = inject_fault(np.array(actions, np.float32), self.params.fault)
        dt_ns = time.perf_counter_ns() - t0
        self.inference_ms.append(dt_ns / 1e6)
        return ActionChunk(request_id=msg.request_id, actions=np.asarray(actions, np.float32), dt=md.dt,
                           offset=md.offset, inference_ns=dt_ns,
                           prefix_frozen=-1 if prefix is None else int(self.policy.last_frozen))

    def step(self) -> None:
        self.server.serve_once(self.handle, timeout_s=0.0)

    def metrics(self) -> dict[str, float]:
        m = {"requests": float(len(self.inference_ms)), "rejected": float(self.rejected),
             "decode_errors": float(self.server.stats.decode_errors)}
        if self.openpi is not None:
            m.update(openpi_requests=float(self.openpi.requests), openpi_errors=float(self.openpi.errors),
                     openpi_unauthorized=float(self.openpi.unauthorized))
        if self.inference_ms:
            a = np.array(self.inference_ms[-500:])
            m.update(inference_p50_ms=float(np.percentile(a, 50)), inference_p99_ms=float(np.percentile(a, 99)))
        return m

    def shutdown(self) -> None:
        if getattr(self, "openpi", None) is not None:
            self.openpi.close()
        if hasattr(self, "server"):
            self.server.close()
