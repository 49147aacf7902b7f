"""Any node, in-process: a fake node context over the in-memory bus and a builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from robot_stack.runtime.config import StackConfig, config_from_dict
from robot_stack.runtime.kinds import node_class
from robot_stack.runtime.node import Node, NodeContext
from robot_stack.testing.bus import FakeBus


@dataclass
class FakeNodeContext(NodeContext):
    """A :class:`~robot_stack.runtime.node.NodeContext` whose sockets are the in-memory
    :class:`~robot_stack.testing.bus.FakeBus` (same interfaces, same codec, no sockets, no threads).

    Args:
        name, config, run_dir: as for the real context (``run_dir`` is only used for file paths).
        bus: the stack's in-memory network (shared by every node of one test).
    """

    bus: FakeBus = field(default_factory=FakeBus)
    start_threads: bool = False

    def publisher(self, hwm: int = 64):
        return self.bus.publisher(self.name)

    def subscriber(self, nodes: Iterable[str], topics: Iterable[str] = ("",), **kw: Any):
        return self.bus.subscriber(
            nodes,
            topics,
            name=f"{self.name}<-{','.join(nodes)}",
            **{k: v for k, v in kw.items() if k in ("history", "queue_size", "on_message")},
        )

    def receiver(self):
        return self.bus.receiver(self.name)

    def sender(self, node: str, timeout_s: float = 1.0):
        return self.bus.sender(node, self.name)

    def request_client(self, endpoint: str, timeout_s: float = 2.0):
        return self.bus.request_client(endpoint, self.name, timeout_s)

    def arm_client(self, arm: str, heartbeat_hz: float = 0.0, timeout_s: float = 2.0):
        from robot_stack.runtime.arm_client import ArmClient

        return ArmClient(None, None, arm=arm, source=self.name, heartbeat_hz=0.0, tx=self.sender(arm))


def build_node(
    config: StackConfig | dict, name: str, bus: FakeBus | None = None, run_dir: str | Path = "/tmp/robot_stack_fake"
) -> Node:
    """Build node ``name`` of a setup on the fake context and run its ``configure``, as the
    launcher would in its own process; step it with ``node.step()`` (on a
    :class:`~robot_stack.testing.clock.FakeClock`, advancing the clock between steps), end it with
    ``node.close()``. Worker threads are not started (``ctx.start_threads`` False): the test runs
    their work itself (:func:`run_workers`), so every run is the same.

    Args:
        config: a validated setup, or its mapping (validated with
            :func:`~robot_stack.runtime.config.config_from_dict`).
        name: the node to build.
        bus: the in-memory network it joins (a new one by default; pass the same bus to several).
        run_dir: the run folder the node sees.

    Returns:
        the configured node; ``node.ctx.bus`` is its bus, ``node.pub`` its publisher.

    Raises:
        ConfigError: a config mapping that does not validate, or no node ``name``.
    """
    from robot_stack.runtime.config import ConfigError

    cfg = config if isinstance(config, StackConfig) else config_from_dict(config, where="<test config>")
    if name not in cfg.nodes:
        raise ConfigError(f"no node named {name!r} in this config (have: {sorted(cfg.nodes)})")
    nc = cfg.nodes[name]
    ctx = FakeNodeContext(name, cfg, Path(run_dir), bus=bus or FakeBus())
    node = node_class(nc.kind)(ctx, nc.typed)
    node.pub = ctx.publisher(node.pub_hwm)
    node.configure()
    return node


def run_workers(node: Node) -> None:
    """In-process, what a node's worker threads and its owner would do between two steps: the
    owner's wake-up check (:meth:`~robot_stack.runtime.node.Node.on_wake`: a due request leaves),
    every owned worker's pending jobs (``run_pending``: the controller's policy calls), then the
    owner handles what they posted (:meth:`~robot_stack.runtime.node.Node.drain_inbox`)."""
    node.on_wake()
    for worker in node.workers:
        worker.run_pending()
    node.drain_inbox(0.0)
