"""Policy node: answers observation windows with action chunks over request/reply.

Binds a REP socket at its input endpoint (``ipc://`` by default; a ``tcp://`` endpoint for a remote
GPU server, with CURVE when it leaves localhost). Every request is validated before the model sees
it: schema (codec), keys/shapes/dtypes (policy metadata), staleness (the window's ages, which are
durations and need no shared clock). A bad request gets an :class:`ErrorReply` and the node stays up.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.devices import POLICY_BACKENDS
from robot_stack.comm.messages import ActionChunk, ErrorReply, Message, ObservationWindow
from robot_stack.runtime.node import Node, NodeParams
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

    def handle(self, topic: str, msg: Message) -> Message:
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
        if self.inference_ms:
            a = np.array(self.inference_ms[-500:])
            m.update(inference_p50_ms=float(np.percentile(a, 50)), inference_p99_ms=float(np.percentile(a, 99)))
        return m

    def shutdown(self) -> None:
        if hasattr(self, "server"):
            self.server.close()
