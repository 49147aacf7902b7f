"""How the controller reaches its policy: one protocol, two transports, and the spec negotiation.

:class:`PolicyClient` is what the controller calls: ``negotiate()`` once at start-up, then
``infer(window)`` per request. Two adapters:

- :class:`ZmqPolicyClient`: our request/reply protocol (a policy node, or a server over TCP with
  CURVE off-host); it asks for the policy's :class:`~robot_stack.comm.messages.PolicySpec` and
  compares it with the setup (:func:`robot_stack.policies.serving.spec_mismatch`);
- :class:`OpenpiPolicyClient`: openpi's websocket protocol (a ``ws://``/``wss://`` endpoint); its
  server sends metadata on connect, and the observation keys are mapped by ``openpi_keys``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from robot_stack.comm.messages import ActionChunk, ObservationWindow, PolicySpec, SpecRequest
from robot_stack.comm.transport import RemoteError, TransportTimeout
from robot_stack.control.requests import Job
from robot_stack.errors import RobotStackError
from robot_stack.runtime.clock import now_ns

log = logging.getLogger(__name__)


def transient_kind(error: Exception) -> str | None:
    """How the request gate treats an inference error: "refused" (the policy refused the request:
    retry after a pause), "timeout" (no reply in time: retry at once), or None (unexpected: counts
    toward the failures that end the node)."""
    if isinstance(error, RemoteError):
        return "refused"
    return "timeout" if isinstance(error, TransportTimeout) else None


class SpecMismatch(RobotStackError, ValueError):
    """The policy's spec does not fit this setup: the controller must not start."""


@dataclass
class Negotiated:
    """What the policy's spec settled: the observation keys and To to send, the image size per
    camera id, the point-cloud settings per camera id (``PointCloudSpec``); ``None`` values: the
    policy gave no spec (the setup's own settings stand, and the policy checks each request)."""

    obs_keys: list[str] | None = None
    obs_horizon: int | None = None
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    point_specs: dict = field(default_factory=dict)
    #: index array putting the policy's action dimensions in the robot's order (None: the same order)
    action_order: object = None


def matched_actions(policy_names, setup: SetupView):
    """The index array that puts a policy's action dimensions in the robot's order, matched by
    name (:func:`robot_stack.control.chunking.action_order`); a policy that names none is applied by
    position, its dimensions already checked, with one warning.

    Raises:
        SpecMismatch: the names differ from the robot's.
    """
    from robot_stack.control.chunking import action_order

    if not policy_names:
        log.warning("the policy names no action dimensions: they are applied by position as %s", setup.action_names)
        return None
    try:
        order = action_order(policy_names, setup.action_names)
    except ValueError as e:
        raise SpecMismatch(f"the policy's spec does not match this controller: {e}") from None
    if order is not None:
        log.warning(
            "the policy's actions come in another order (%s): remapped by name to %s",
            list(policy_names),
            setup.action_names,
        )
    return order


class PolicyClient(Protocol):
    """The controller's view of a policy, whatever the transport."""

    endpoint: str

    def negotiate(self, setup: SetupView, stop) -> Negotiated:
        """Agree on the observation with the policy before the first request.

        Raises:
            SpecMismatch: the policy's spec contradicts the setup (named differences).
        """

    def infer(self, window: ObservationWindow) -> ActionChunk:
        """One inference. Raises TransportTimeout (no reply in time) or RemoteError (refused)."""

    def close(self) -> None: ...


@dataclass
class SetupView:
    """What the negotiation compares the spec with: the controller's settings (None: open) and
    its arms in action order (8 actions each, named by ``control.features.action_names``)."""

    obs_keys: list[str] | None
    obs_horizon: int | None
    image_size: tuple[int, int] | None
    camera_ids: list[str]
    arms: list[str]
    extrinsics: dict
    spec_timeout_s: float

    @property
    def action_dim(self) -> int:
        return 8 * len(self.arms)

    @property
    def action_names(self) -> list[str]:
        from robot_stack.control.features import action_names

        return action_names(self.arms)


class _RequestPolicyClient:
    """What both protocols share: one request client, ``infer`` as a request, ``close``.

    Args:
        client: anything with ``endpoint``, ``request(topic, msg)`` and ``close()``.
    """

    def __init__(self, client):
        self.client = client
        self.endpoint = client.endpoint

    def infer(self, window: ObservationWindow) -> ActionChunk:
        """One chunk for ``window`` (raises what the request client raises: timeout, remote error)."""
        return self.client.request("infer", window)

    def close(self) -> None:
        self.client.close()


class ZmqPolicyClient(_RequestPolicyClient):
    """Our request/reply protocol (see the module docstring).

    Args:
        client: a request client (:class:`~robot_stack.comm.transport.RequestClient`, or the fake
            context's in-memory one).
    """

    def negotiate(self, setup: SetupView, stop) -> Negotiated:
        """Ask for the spec until ``setup.spec_timeout_s`` passes (the policy may still be loading
        its model) or ``stop()`` turns true. No answer in time, an older server that does not know
        the request, or a spec that does not hold together: logged, and the per-request checks
        remain (an empty :class:`Negotiated`).

        Raises:
            SpecMismatch: the spec differs from the setup (each difference named).
        """
        from robot_stack.control.features import PointCloudSpec
        from robot_stack.policies.serving import metadata_from_spec, spec_mismatch

        deadline = now_ns() + int(setup.spec_timeout_s * 1e9)
        while not stop():
            try:
                reply = self.client.request("spec", SpecRequest(request_id=0), timeout_s=min(2.0, setup.spec_timeout_s))
            except TransportTimeout:
                if now_ns() > deadline:
                    log.warning(
                        "the policy at %s sent no spec within %.0f s: observations are checked per request",
                        self.endpoint,
                        setup.spec_timeout_s,
                    )
                    return Negotiated()
                continue
            except RemoteError as e:
                log.warning(
                    "the policy at %s does not give its spec (%s): observations are checked per request",
                    self.endpoint,
                    e,
                )
                return Negotiated()
            if not isinstance(reply, PolicySpec):
                log.warning("the policy at %s answered a spec request with %s", self.endpoint, reply.SCHEMA)
                return Negotiated()
            try:
                md = metadata_from_spec(reply)
            except ValueError as e:  # it decoded, but does not hold together: the per-request checks remain
                log.warning(
                    "the policy at %s sent a malformed spec (%s): observations are checked per request",
                    self.endpoint,
                    e,
                )
                return Negotiated()
            diffs = spec_mismatch(
                md, setup.obs_keys, setup.obs_horizon, setup.image_size, setup.camera_ids, action_dim=setup.action_dim
            )
            if diffs:
                raise SpecMismatch("the policy's spec does not match this controller: " + "; ".join(diffs))
            out = Negotiated(
                obs_keys=list(setup.obs_keys) if setup.obs_keys is not None else list(md.obs_shapes),
                obs_horizon=setup.obs_horizon or md.obs_horizon,
                action_order=matched_actions(md.action_names, setup),
            )
            for k, (shape, _) in md.obs_shapes.items():
                cam, _, kind = k.rpartition(".")
                if kind in ("color", "depth") and cam:
                    out.image_sizes[cam] = (int(shape[0]), int(shape[1]))
            out.point_specs = {c: PointCloudSpec.from_dict(d) for c, d in md.points.items()}
            no_ext = sorted(set(out.point_specs) - set(setup.extrinsics))
            if no_ext:
                raise SpecMismatch(
                    f"the policy builds point clouds of cameras {no_ext}, but the setup's calibration "
                    "file has no T_base_camera for them (calibrate: robot-stack calibrate hand-eye, "
                    "eye-to-hand)"
                )
            log.info(
                "policy spec: %s, To %d, H %d, %d-D %s actions at %.3f s",
                sorted(md.obs_shapes),
                md.obs_horizon,
                md.horizon,
                md.action_dim,
                md.action_space,
                md.dt,
            )
            return out
        return Negotiated()


class OpenpiPolicyClient(_RequestPolicyClient):
    """openpi's websocket protocol (see the module docstring).

    Args:
        client: an :class:`~robot_stack.comm.openpi.OpenpiClient` (checks the endpoint; connects on
            the first request).
    """

    def negotiate(self, setup: SetupView, stop) -> Negotiated:
        """openpi's server describes itself on connect; the keys are the setup's mapping. Its
        actions carry no names: they are applied by position (dimensions checked per chunk)."""
        log.warning(
            "the openpi policy at %s names no action dimensions: they are applied by position as %s",
            self.endpoint,
            setup.action_names,
        )
        return Negotiated()


class PolicyWorker:
    """The blocking policy calls, off the controller's owner thread.

    The worker negotiates the spec once, then runs each submitted :class:`Job` and posts the
    outcome to the owner's inbox: ``("negotiated", Negotiated)``, ``("failed", reason)`` (no client
    can be made, or the spec does not match), ``("reply", job, ActionChunk | Exception, arrival_ns)``.
    It shares nothing else with the owner. In-process (no thread), :meth:`run_pending` does the same
    work in the caller's thread.

    Args:
        make_client: builds the :class:`PolicyClient` (in the worker's thread: a bad endpoint or
            missing CURVE keys become ``("failed", reason)``).
        setup: what the spec is compared with.
        inbox: the owner's queue.
        threaded: start the worker thread (False: the caller runs :meth:`run_pending`).
    """

    def __init__(self, make_client, setup: SetupView, inbox, threaded: bool = True):
        import queue
        import threading

        self.make_client, self.setup, self.inbox = make_client, setup, inbox
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.client = None
        self.negotiated = False
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True) if threaded else None
        if self.thread is not None:
            self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def _start(self) -> bool:
        """Make the client and negotiate (once); False when the worker cannot go on."""
        if self.negotiated:
            return self.client is not None
        self.negotiated = True
        try:
            self.client = self.make_client()
        except Exception as e:
            self.inbox.put(("failed", f"cannot reach the policy: {type(e).__name__}: {e}"))
            return False
        try:
            self.inbox.put(("negotiated", self.client.negotiate(self.setup, self._stop.is_set)))
        except SpecMismatch as e:
            self.inbox.put(("failed", str(e)))
            return False
        return True

    def _run_job(self, job: Job) -> None:
        try:
            reply = self.client.infer(job.window)
        except Exception as e:  # the owner decides: counted, retried, or the end of the node
            reply = e
        self.inbox.put(("reply", job, reply, now_ns()))

    def _run(self) -> None:
        import queue

        if not self._start():
            return
        while not self._stop.is_set():
            try:
                job = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            self._run_job(job)

    def run_pending(self) -> None:
        """In-process: negotiate if not yet done, then run every submitted job."""
        import queue

        if not self._start():
            return
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            self._run_job(job)

    def close(self) -> None:
        self._stop.set()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout=3)
        if self.client is not None:
            self.client.close()


def make_policy_client(p, ctx, dt_s: float):
    """A factory of the controller's policy client from its params ``p`` and node context: openpi's
    client is made now (it checks its endpoint: plain ws:// to loopback only; it connects on the
    first request), ours in the worker (a bad endpoint or missing CURVE keys end the node there).

    Raises:
        SecurityError: a ws:// endpoint that leaves the host.
    """
    import os

    if p.policy_endpoint is not None and p.policy_endpoint.startswith(("ws://", "wss://")):
        from robot_stack.comm.openpi import OpenpiClient, OpenpiKeys

        key = os.environ.get(p.openpi_api_key_env) if p.openpi_api_key_env else None
        client = OpenpiPolicyClient(
            OpenpiClient(
                p.policy_endpoint,
                OpenpiKeys(keys=p.openpi_keys or {"observation/state": "state"}),
                timeout_s=p.request_timeout_s,
                api_key=key,
                dt=dt_s,
            )
        )
        return lambda: client
    endpoint = p.policy_endpoint or ctx.config.in_endpoint(p.policy, ctx.run_dir)
    return lambda: ZmqPolicyClient(ctx.request_client(endpoint, timeout_s=p.request_timeout_s))
