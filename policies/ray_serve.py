"""Serving a policy beyond one machine on Ray Serve: replicas, ``@serve.batch``, and the policy node
as the adapter in front.

Layout::

    controllers --ZeroMQ (CURVE off-host), our schemas--> policy node, backend ``ray_serve``
        --Ray Serve deployment handle--> PolicyDeployment replicas (any node of the Ray cluster)

- :func:`policy_app` builds the Serve application: ``num_replicas`` replicas of
  :class:`PolicyDeployment`, each holding one policy built from an ordinary backend config (the
  ``backend:`` of a policy node: ``checkpoint``, ``onnx``, ``goto``), each batching the requests it
  receives with ``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``) into one
  :meth:`~robot_stack.policies.base.Policy.predict_batch`. Start it with ``serve.run`` on the
  cluster (``python -m robot_stack.policies.ray_serve BACKEND.yaml``).
- :class:`RayServeConfig` (policy backend ``ray_serve``) makes a policy node the gateway: it joins
  the cluster as a Ray client driver, asks the deployment for its metadata, and forwards each
  request as our codec's frames (msgpack header + raw buffers, the same bytes as on our sockets).
  Controllers see a policy node as always: our message schemas, CURVE on the ZeroMQ side, request
  ids and inference timing (``inference_ns`` is the replica's own, from the reply). Requests of one
  node batch (``batch: {max_batch: ...}``) go out concurrently, so Serve spreads them over replicas.

Inside the Ray cluster, traffic uses Ray's own transport and serialization (our frames travel as
bytes objects); keep the cluster on a trusted network or turn on Ray's TLS (``RAY_USE_TLS=1`` and
its certificate variables, see the Ray docs "TLS authentication"). Replicas re-check every request
(:func:`robot_stack.policies.serving.check_request`), so a bad one is answered alone.

Sources: Ray Serve docs (deployments, ``serve.batch``, ``DeploymentHandle``), Ray 2.60.
"""

from __future__ import annotations

import os
import time
import uuid
from types import SimpleNamespace
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.comm.codec import decode, encode
from robot_stack.comm.messages import ActionChunk, ErrorReply
from robot_stack.policies.base import Policy
from robot_stack.policies.serving import (
    check_request,
    committed_prefix,
    frozen_count,
    metadata_from_dict,
    metadata_to_dict,
)
from robot_stack.runtime.devices import DeviceConfig

DEFAULT_APP = "robot_stack_policy"


class PolicyReplica:
    """One replica's work, without Ray (unit-testable): decode, check, predict a batch, encode.

    Args:
        backend: a policy backend config as in a policy node's ``backend:`` (dict).
        max_obs_age_s: the staleness bound of :func:`check_request`, s.
        threads: torch / ONNX Runtime CPU threads of this replica.
    """

    def __init__(self, backend: dict, max_obs_age_s: float = 1.0, threads: int = 1):
        from robot_stack.runtime.devices import POLICY_BACKENDS

        cfg = POLICY_BACKENDS.parse(backend)
        if cfg.type == "ray_serve":
            raise ValueError("a Ray Serve replica cannot itself forward to Ray Serve (backend type ray_serve)")
        if cfg.type != "goto":
            import torch

            torch.set_num_threads(threads)
        self.policy = cfg.build(None, SimpleNamespace(threads=threads))
        self.max_obs_age_s = max_obs_age_s
        self.replica = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.requests = 0
        self.batches = 0

    def metadata(self) -> dict:
        return metadata_to_dict(self.policy.metadata)

    def stats(self) -> dict:
        return {"replica": self.replica, "requests": self.requests, "batches": self.batches}

    def answer(self, requests: list[list[bytes]]) -> list[list[bytes]]:
        """Each request's reply frames (an ActionChunk or an ErrorReply), in request order."""
        msgs, replies = [], []
        for frames in requests:
            try:
                _, m = decode(frames)
            except Exception as e:  # DecodeError or worse: this request only
                msgs.append(None)
                replies.append(ErrorReply(code="malformed", reason=str(e)))
                continue
            msgs.append(m)
            replies.append(check_request(m, self.policy.metadata, self.max_obs_age_s))
        valid = [i for i, r in enumerate(replies) if r is None]
        if valid:
            t0 = time.perf_counter_ns()
            out = self.policy.predict_batch(
                [msgs[i].obs for i in valid],
                [committed_prefix(msgs[i]) for i in valid],
                [frozen_count(msgs[i]) for i in valid],
            )
            dt = time.perf_counter_ns() - t0
            md = self.policy.metadata
            for i, (actions, frozen) in zip(valid, out):
                m = msgs[i]
                replies[i] = ActionChunk(
                    request_id=m.request_id,
                    actions=np.asarray(actions, np.float32),
                    dt=md.dt,
                    offset=md.offset,
                    inference_ns=dt,
                    prefix_frozen=-1 if committed_prefix(m) is None else int(frozen),
                )
            self.batches += 1
            self.requests += len(valid)
        return [[bytes(f) for f in encode("reply", r)] for r in replies]


def policy_app(
    backend: dict,
    num_replicas: int = 2,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.002,
    max_obs_age_s: float = 1.0,
    threads: int = 1,
    num_cpus: float = 1.0,
):
    """The Serve application (``serve.run(policy_app(...), name=DEFAULT_APP, route_prefix=None)``).

    Args:
        backend: the replicas' policy backend config (dict, as a policy node's ``backend:``).
        num_replicas: replicas (Ray places them on the cluster's nodes).
        max_batch_size, batch_wait_timeout_s: ``@serve.batch`` of each replica.
        max_obs_age_s: staleness bound of the replicas' request check, s.
        threads: CPU threads per replica. num_cpus: Ray CPUs reserved per replica (0.5: two per core).
    """
    from ray import serve

    @serve.deployment(
        num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=4 * max_batch_size
    )
    class PolicyDeployment:
        def __init__(self, backend: dict, max_obs_age_s: float, threads: int):
            self.work = PolicyReplica(backend, max_obs_age_s, threads)

        def metadata(self) -> dict:
            return self.work.metadata()

        def stats(self) -> dict:
            return self.work.stats()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def infer(self, requests: list[list[bytes]]) -> list[list[bytes]]:
            return self.work.answer(requests)

    return PolicyDeployment.bind(backend, max_obs_age_s, threads)


class RayServePolicy(Policy):
    """The gateway's policy: every request goes to the Serve deployment ``app`` (see module doc)."""

    def __init__(self, handle, timeout_s: float):
        self.handle = handle
        self.timeout_s = timeout_s
        self.metadata = metadata_from_dict(handle.metadata.remote().result(timeout_s=timeout_s))

    def predict(self, obs, committed_prefix=None, frozen=None):
        a, self.last_frozen = self.predict_batch([obs], [committed_prefix], [frozen])[0]
        return a

    def predict_batch(self, obs, committed_prefixes=None, frozens=None):
        from robot_stack.comm.messages import ObservationWindow

        b = len(obs)
        pres = committed_prefixes if committed_prefixes is not None else [None] * b
        frs = frozens if frozens is not None else [None] * b
        pending = []
        for i, (o, p, f) in enumerate(zip(obs, pres, frs)):
            msg = ObservationWindow(
                request_id=i,
                obs=o,
                obs_age_ns=np.zeros(0, np.int64),
                committed_prefix=None if p is None else np.asarray(p, np.float32),
                prefix_frozen=-1 if f is None else int(f),
            )
            pending.append(self.handle.infer.remote([bytes(x) for x in encode("infer", msg)]))  # all in flight
        out = []
        for i, resp in enumerate(pending):
            _, reply = decode(resp.result(timeout_s=self.timeout_s))
            if isinstance(reply, ErrorReply):
                raise RuntimeError(f"ray serve replica: {reply.code}: {reply.reason}")
            if reply.request_id != i:
                raise RuntimeError(f"ray serve replica answered request {reply.request_id} for {i}")
            out.append((reply.actions, reply.prefix_frozen))
        return out


class RayServeConfig(DeviceConfig):
    """Policy backend ``ray_serve``: the node forwards to a Ray Serve deployment (:func:`policy_app`).

    Keys: ``address`` (the Ray cluster, e.g. ``ray://head:10001`` or ``HOST:6379``; "auto": the
    local one), ``app`` (the Serve application name), ``namespace`` (Serve's, default "serve"),
    ``timeout_s`` (per request).
    """

    type: Literal["ray_serve"] = "ray_serve"
    requires = ("ray",)
    address: str = Field("auto", description="the Ray cluster to join (ray.init address)")
    app: str = Field(DEFAULT_APP, description="the Serve application with the policy deployment")
    timeout_s: float = Field(2.0, gt=0, description="per request, s")

    def build(self, ctx, params):
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        handle = serve.get_app_handle(self.app)
        return RayServePolicy(handle, self.timeout_s)


def main(argv: list[str] | None = None) -> int:
    """``python -m robot_stack.policies.ray_serve BACKEND.yaml [--replicas N] [--address A]``: deploy."""
    import argparse

    import yaml

    ap = argparse.ArgumentParser(
        description="deploy a policy on Ray Serve (the backend YAML: a policy node's backend:)"
    )
    ap.add_argument("backend", help="YAML with the backend config, e.g. {type: checkpoint, path: p.safetensors}")
    ap.add_argument("--address", default="auto")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--wait-ms", type=float, default=2.0)
    args = ap.parse_args(argv)
    import ray
    from ray import serve

    ray.init(address=args.address)
    serve.start(proxy_location="Disabled")
    serve.run(
        policy_app(yaml.safe_load(open(args.backend)), args.replicas, args.max_batch, args.wait_ms / 1e3),
        name=args.app,
        route_prefix=None,
    )
    print(
        f"deployed {args.app}: {args.replicas} replicas; policy nodes reach it with "
        f"backend: {{type: ray_serve, address: {args.address}, app: {args.app}}}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
