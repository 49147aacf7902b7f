"""Node runtime: lifecycle, heartbeats and metrics for one OS process.

A node subclasses :class:`Node`, declares a pydantic ``Params`` model and implements
:meth:`Node.configure` (open drivers and sockets), :meth:`Node.step` (one iteration of its fixed-rate
loop) and optionally :meth:`Node.shutdown`. The runtime

- runs ``step`` on a :class:`~robot_stack.runtime.clock.RateLoop` at ``rate_hz``;
- publishes a :class:`~robot_stack.comm.messages.Heartbeat` with loop jitter, overruns and the node's
  own :meth:`Node.metrics` on topic ``heartbeat/<node>``;
- stops cleanly on SIGINT/SIGTERM (``shutdown`` always runs), and exits if its parent (the
  launcher) dies, so no orphan survives (``robot_stack.runtime.lifeline`` arms that before any import);
- treats an unexpected exception while handling one input message as a rejection of that message
  (:meth:`Node.guarded`: logged, counted in ``input_rejected.<what>.<error>``), never as the node's end;
- counts an exception escaping :meth:`Node.step` in ``step_errors`` and goes on, unless steps keep
  failing for ``MAX_FAILING_S`` (then the node ends with code 1 and the launcher reports it);
  :class:`NodeFatal` ends the node at once.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import collections
import contextlib
import logging
import os
import queue
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from robot_stack.runtime.clock import RateLoop, now_ns
from robot_stack.runtime.lifeline import die_with_parent, parent_gone, set_stop_grace
from robot_stack.runtime.config import StackConfig
from robot_stack.comm.messages import Heartbeat
from robot_stack.comm.security import stop_authenticators
from robot_stack.comm.transport import Publisher, Receiver, RequestClient, Sender, Subscriber

log = logging.getLogger(__name__)

#: exit code of a node that could not start (its device or file is absent: it never ran)
START_FAILED = 4
#: prefix of the one machine-readable line a node that could not start writes for the launcher
START_FAILED_MARK = "ROBOT_STACK_START_FAILED "


def start_failure(name: str, kind: str, params: Any, err: BaseException) -> dict[str, str]:
    """What a person needs about a node that could not start: ``{"node", "device", "reason", "fix"}``.

    ``device`` names the node's device (its ``driver``/``device``/``backend`` type and the keys
    that find it), ``reason`` is the error in one line, ``fix`` the error's own ``fix`` attribute
    or a hint by error type (a missing package, a missing file, a device that does not answer)."""
    device = kind
    for key in ("driver", "device", "backend"):
        cfg = getattr(params, key, None)
        if cfg is not None and getattr(cfg, "type", None):
            where = [
                f"{k} {getattr(cfg, k)}"
                for k in ("robot_ip", "serial", "port", "path", "device", "address")
                if getattr(cfg, k, None) not in (None, "")
            ]
            device = f"{kind} {key} {cfg.type}" + (f" ({', '.join(where)})" if where else "")
            break
    reason = " ".join(str(err).split()) or type(err).__name__
    fix = getattr(err, "fix", "") or ""
    if not fix:
        if isinstance(err, ImportError):
            fix = "install its SDK: robot-stack check SETUP names the package extra"
        elif isinstance(err, FileNotFoundError):
            fix = "check the file's path in the setup"
        elif kind in ("arm", "camera", "teleop"):
            fix = "check that the device is connected and powered and that the setup names it (address, serial, port)"
        else:
            fix = "see the node's log above (robot-stack --debug up shows the traceback)"
    return {"node": name, "device": device, "reason": reason, "fix": fix}


class NodeParams(BaseModel):
    """Base of node parameter models (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    def references(self) -> dict[str, str]:
        """Other nodes of the setup these params name: node name -> the node kind it must be
        (``robot-stack check`` refuses a dangling or wrong reference)."""
        return {}

    def problems(self, config) -> list[str]:
        """What is wrong with these params in the setup ``config`` beyond their own fields (a
        robot model that does not exist, ...): each entry ``"<key>: <reason>"``; empty if nothing."""
        return []


@dataclass
class NodeContext:
    """What a node knows about the stack it runs in."""

    name: str
    config: StackConfig
    run_dir: Path
    #: whether the node starts its worker threads (inference, fast layer); the fake context sets
    #: False so a test runs their work step by step (``robot_stack.testing.run_workers``)
    start_threads: bool = True

    @property
    def node_config(self):
        return self.config.nodes[self.name]

    def _curve_client(self, endpoint: str | None = None, node: str | None = None):
        """This node's CURVE client settings for a connection to ``endpoint`` (of node ``node``):
        used where the peer binds with CURVE (its ``curve_server``) or the endpoint leaves the
        host; same-host ipc and loopback peers without CURVE are reached without it."""
        from robot_stack.comm.security import is_local_endpoint

        cc = self.node_config.curve_client
        if cc is None:
            return None
        peer = self.config.nodes.get(node) if node is not None else None
        if peer is not None and peer.curve_server is not None:
            return cc.build()
        if endpoint is not None and is_local_endpoint(endpoint):
            return None
        return cc.build()

    def publisher(self, hwm: int = 64) -> Publisher:
        """This node's PUB socket (bound at its pub endpoint)."""
        nc = self.node_config
        curve = nc.curve_server.build() if nc.curve_server else None
        return Publisher(self.config.pub_endpoint(self.name, self.run_dir), self.name, hwm=hwm, curve=curve)

    def subscriber(self, nodes: Iterable[str], topics: Iterable[str] = ("",), **kw: Any) -> Subscriber:
        """A SUB socket connected to the PUB endpoints of ``nodes``."""
        nodes = list(nodes)
        eps = [self.config.pub_endpoint(n, self.run_dir) for n in nodes]
        curves = {self._curve_client(e, n) is not None for e, n in zip(eps, nodes)}
        return Subscriber(
            eps,
            topics,
            name=f"{self.name}<-{','.join(nodes)}",
            curve=self._curve_client(eps[0], nodes[0]) if curves == {True} else None,
            **kw,
        )

    def receiver(self) -> Receiver:
        """This node's lossless input (PULL, bound at its in endpoint)."""
        nc = self.node_config
        curve = nc.curve_server.build() if nc.curve_server else None
        return Receiver(self.config.in_endpoint(self.name, self.run_dir), name=self.name, curve=curve)

    def sender(self, node: str, timeout_s: float = 1.0) -> Sender:
        """A lossless ordered channel to ``node``'s input."""
        ep = self.config.in_endpoint(node, self.run_dir)
        return Sender(ep, self.name, timeout_s=timeout_s, curve=self._curve_client(ep, node))

    def request_client(self, endpoint: str, timeout_s: float = 2.0) -> RequestClient:
        """A REQ client to ``endpoint`` (another node's input, or a remote policy server), with this
        node's CURVE client settings (``curve_client``; required for TCP that leaves the host).

        Raises:
            SecurityError: a non-local TCP endpoint without CURVE settings.
        """
        return RequestClient(endpoint, self.name, timeout_s=timeout_s, curve=self._curve_client(endpoint))

    def arm_client(self, arm: str, heartbeat_hz: float = 0.0, timeout_s: float = 2.0):
        """An :class:`~robot_stack.runtime.arm_client.ArmClient` to arm node ``arm``, with this node's CURVE
        client settings; ``heartbeat_hz`` 0: the node heartbeats from its own loop."""
        from robot_stack.runtime.arm_client import ArmClient

        return ArmClient(
            self.config,
            self.run_dir,
            arm=arm,
            source=self.name,
            heartbeat_hz=heartbeat_hz,
            timeout_s=timeout_s,
            curve=self._curve_client(self.config.in_endpoint(arm, self.run_dir), arm),
        )


class NodeFatal(RobotStackError, RuntimeError):
    """Raised (or handed to :meth:`Node.fail`) when a node cannot go on: the node ends with code 1."""


class Node:
    """Base class of all nodes.

    Class attributes:
        Params: the pydantic model of this kind's ``params``.
        default_rate_hz: loop rate when params have no ``rate_hz``.
    """

    Params: ClassVar[type[NodeParams]] = NodeParams
    #: a node that sets an inbox in ``configure`` (a :class:`queue.SimpleQueue`) is woken between
    #: its steps by every item other threads put there: :meth:`on_post` handles it in the owner
    #: thread at once. Its worker threads only post; they share no other state with the owner.
    inbox: queue.SimpleQueue | None = None
    #: the owner thread also wakes at this time (ns) between steps and calls :meth:`on_wake`
    wake_at_ns: int | None = None
    default_rate_hz: ClassVar[float] = 100.0
    #: messages the node's publisher queues for each subscriber before it drops that subscriber's
    #: newest (ZeroMQ's send high-water mark): a starved subscriber, such as a recorder beside a CPU
    #: hog, catches up afterwards instead of losing samples (camera nodes keep 64: frames are MBs)
    pub_hwm: ClassVar[int] = 1000
    #: steps failing without a single success for this long end the node, s
    MAX_FAILING_S: ClassVar[float] = 1.0

    def __init__(self, ctx: NodeContext, params: NodeParams):
        self.ctx = ctx
        self.name = ctx.name
        self.params = params
        self.rate_hz = float(getattr(params, "rate_hz", self.default_rate_hz))
        self.stop_event = threading.Event()
        self._stop_watchdog: threading.Timer | None = None
        self.pub: Publisher | None = None
        self.loop: RateLoop | None = None
        self.step_errors = 0
        self.input_rejections: collections.Counter[str] = collections.Counter()
        self._fatal: str | None = None
        #: what the node opened (sockets, drivers, threads to join), released in reverse order
        #: after :meth:`shutdown` whatever state ``configure`` reached (:meth:`own`)
        self.resources = contextlib.ExitStack()
        #: helpers that do blocking work for the owner and post results to its inbox; each has
        #: ``run_pending()``, which the fake context calls instead of a thread (``testing.run_workers``)
        self.workers: list = []

    # --- to override -------------------------------------------------------------------------
    @classmethod
    def publishes(cls, params) -> list[str]:
        """The topics this kind publishes with ``params`` (besides ``heartbeat/<name>``), for the
        setup's dataflow graph (:mod:`robot_stack.runtime.graph`); a kind that only answers
        requests or only listens publishes none."""
        return []

    def configure(self) -> None:
        """Open drivers and sockets. ``self.pub`` is ready. Raise to abort start-up."""

    def step(self) -> None:
        """One loop iteration (must not block longer than one period)."""

    def shutdown(self) -> None:
        """Release drivers and sockets; always called, also after errors."""

    def metrics(self) -> dict[str, float]:
        """Node-specific metrics for the heartbeat (flat str -> float)."""
        return {}

    def own(self, resource, close=None):
        """Register ``resource`` to be released when the node ends (``close()``, or the callable
        ``close``), after :meth:`shutdown`, in reverse order of registration; returns ``resource``."""
        self.resources.callback(close if close is not None else resource.close)
        return resource

    def close(self) -> None:
        """End the node: :meth:`shutdown`, then release every resource registered with :meth:`own`,
        even when ``shutdown`` fails (its error is raised after)."""
        try:
            self.shutdown()
        finally:
            self.resources.close()

    def on_post(self, item: Any) -> None:
        """An item another thread put in :attr:`inbox`, handled in the owner thread."""

    def on_wake(self) -> None:
        """:attr:`wake_at_ns` has come (owner thread, between steps)."""

    def drain_inbox(self, timeout_s: float = 0.0) -> int:
        """Handle what is in the inbox, waiting up to ``timeout_s`` for a first item (and up to
        :attr:`wake_at_ns`, which then calls :meth:`on_wake`); returns the items handled."""
        if self.inbox is None:
            return 0
        wake = self.wake_at_ns
        if wake is not None:
            timeout_s = min(timeout_s, max(0.0, (wake - now_ns()) / 1e9))
        n = 0
        try:
            item = self.inbox.get(timeout=timeout_s) if timeout_s > 0 else self.inbox.get_nowait()
            while True:
                self.guarded("post", self.on_post, item)
                n += 1
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        if self.wake_at_ns is not None and now_ns() >= self.wake_at_ns:
            self.wake_at_ns = None
            self.guarded("wake", self.on_wake)
        return n

    # --- input handling ----------------------------------------------------------------------
    def guarded(self, what: str, handler, *args: Any) -> bool:
        """Run ``handler(*args)`` for one input message. An unexpected exception rejects that one
        message: logged (first ones and then every 100th) and counted in ``input_rejected.<what>.<error>``;
        returns False. :class:`NodeFatal` passes through."""
        try:
            handler(*args)
            return True
        except NodeFatal:
            raise
        except Exception as e:
            key = f"{what}.{type(e).__name__}"
            self.input_rejections[key] += 1
            n = self.input_rejections[key]
            if n <= 3 or n % 100 == 0:
                log.error(
                    "rejected one %s message (%s #%d): %s: %s", what, key, n, type(e).__name__, e, exc_info=n == 1
                )
            return False

    def fail(self, reason: str) -> None:
        """From any thread: end the node with ``reason`` (logged, exit code 1) at its next step."""
        if self._fatal is None:
            self._fatal = reason
            log.error("fatal: %s", reason)
        self.stop_event.set()

    # --- runtime -----------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        """SIGINT/SIGTERM (from the launcher, or from the kernel when the launcher died): stop, and
        exit hard if the clean stop outlasts the launcher's grace period. A live launcher SIGKILLs
        such a node itself; after a dead one nobody would, and an orphan would stay."""
        self.request_stop()
        if self._stop_watchdog is None:
            grace = self.ctx.config.shutdown_timeout_s + 1.0
            self._stop_watchdog = threading.Timer(grace, self._exit_hard, args=(signum, grace))
            self._stop_watchdog.daemon = True
            self._stop_watchdog.start()

    def _exit_hard(self, signum: int, grace: float) -> None:
        log.error("clean stop after signal %d took longer than %.1f s: exiting now", signum, grace)
        logging.shutdown()
        os._exit(1)

    def heartbeat(self, state: str) -> None:
        if self.pub is None:
            return
        m = {
            "rate_hz": self.rate_hz,
            "step_errors": float(self.step_errors),
            "input_rejected": float(sum(self.input_rejections.values())),
        }
        m.update({f"input_rejected.{k}": float(v) for k, v in self.input_rejections.items()})
        if self.loop is not None:
            for k, v in self.loop.stats().as_dict().items():
                m[f"loop.{k}"] = v
        m.update(self.metrics())
        self.pub.publish(Heartbeat.topic(self.name), Heartbeat(node=self.name, state=state, metrics=m))

    def _report_start_failure(self, err: BaseException) -> None:
        """Log why the node could not start in one line (the traceback only with
        ``ROBOT_STACK_DEBUG=1``, which ``robot-stack --debug`` sets) and tell the launcher."""
        import json
        import sys

        info = start_failure(self.name, self.ctx.node_config.kind, self.params, err)
        debug = os.environ.get("ROBOT_STACK_DEBUG") == "1"
        log.error("could not start: %s", info["reason"], exc_info=err if debug else None)
        print(START_FAILED_MARK + json.dumps(info), file=sys.stderr, flush=True)

    def run(self) -> int:
        """Run until stopped; returns the process exit code (0 on clean stop, :data:`START_FAILED`
        when :meth:`configure` raised: the device or a file is absent)."""
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        die_with_parent()  # again: harmless, and covers nodes started without robot_stack.nodes.main
        set_stop_grace(self.ctx.config.shutdown_timeout_s + 1.0)
        if parent_gone():
            log.error("the launcher died before this node started: exiting")
            return 3
        hb_period_ns = int(1e9 / self.ctx.node_config.heartbeat_hz)
        code = 0
        try:
            try:
                self.pub = self.ctx.publisher(self.pub_hwm)
                self.configure()
            except Exception as e:  # the node never ran: one line for the launcher's summary
                self._report_start_failure(e)
                return START_FAILED
            log.info("running at %.1f Hz", self.rate_hz)
            self.loop = RateLoop(self.rate_hz)
            next_hb = 0
            failing_since: int | None = None
            while not self.stop_event.is_set():
                try:
                    self.step()
                    failing_since = None
                except NodeFatal as e:
                    self.fail(str(e))
                    break
                except Exception as e:
                    self.step_errors += 1
                    t_err = now_ns()
                    failing_since = failing_since or t_err
                    if self.step_errors <= 3 or self.step_errors % 100 == 0:
                        log.error(
                            "step failed (#%d): %s: %s",
                            self.step_errors,
                            type(e).__name__,
                            e,
                            exc_info=self.step_errors == 1,
                        )
                    if t_err - failing_since > self.MAX_FAILING_S * 1e9:
                        self.fail(f"every step failed for {self.MAX_FAILING_S:.1f} s, last: {type(e).__name__}: {e}")
                        break
                t = now_ns()
                if t >= next_hb:
                    self.heartbeat("running")
                    next_hb = t + hb_period_ns
                self.loop.sleep(self.drain_inbox if self.inbox is not None else None)
            if self._fatal is not None:
                code = 1
        except Exception:
            log.exception("node %s failed", self.name)
            code = 1
        finally:
            try:
                self.heartbeat("stopping")
            except Exception:
                pass
            try:
                self.close()
            except Exception:
                log.exception("shutdown of %s failed", self.name)
                code = code or 1
            if self.pub is not None:
                self.pub.close()
            stop_authenticators()  # CURVE ZAP threads, if this node started any
            st = self.loop.stats() if self.loop else None
            if st is not None:
                log.info(
                    "stopped: %d periods, %d overruns, jitter p99 %.3f ms",
                    st.periods,
                    st.overruns,
                    st.jitter_p99_s * 1e3,
                )
        return code


def setup_logging(name: str, level: int = logging.INFO) -> None:
    """Log lines as ``LEVEL logger: message`` on stderr (the launcher prefixes node name and time)."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    os.environ.setdefault("ROBOT_STACK_NODE", name)
