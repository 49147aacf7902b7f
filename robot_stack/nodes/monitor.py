"""Monitor node: subscribes to other nodes and logs per-topic rates, ages and decode errors.

Like ``rostopic hz`` for the whole stack; also the simplest consumer to prove a stack is alive.
"""

from __future__ import annotations

import logging

from pydantic import Field

from robot_stack.runtime.clock import now_ns
from robot_stack.comm.messages import Heartbeat
from robot_stack.runtime.node import Node, NodeParams

log = logging.getLogger(__name__)


class MonitorParams(NodeParams):
    watch: list[str] = Field(min_length=1, description="node names to subscribe to")
    rate_hz: float = Field(10.0, gt=0, le=100, description="loop rate, Hz")
    report_every_s: float = Field(2.0, gt=0, description="one report line per topic rate every this many s")


class MonitorNode(Node):
    """Counts samples per topic and logs a one-line report every ``report_every_s``."""

    Params = MonitorParams

    def configure(self) -> None:
        for n in self.params.watch:
            self.ctx.config.pub_endpoint(n, self.ctx.run_dir)  # raises ConfigError for unknown names
        self.sub = self.own(self.ctx.subscriber(self.params.watch))
        self._last_report = now_ns()
        self._last_counts: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._last_seq: dict[str, int] = {}

    def step(self) -> None:
        for topic in self.sub.topics():
            m = self.sub.latest(topic)
            if m is not None and self._last_seq.get(topic) != m.seq:
                self._last_seq[topic] = m.seq
                self._counts[topic] = m.seq + 1
        t = now_ns()
        dt = (t - self._last_report) / 1e9
        if dt >= self.params.report_every_s:
            parts = []
            for topic in sorted(self._counts):
                n = self._counts[topic] - self._last_counts.get(topic, self._counts[topic])
                m = self.sub.latest(topic)
                age_ms = (t - m.stamp_ns) / 1e6 if m is not None else float("nan")
                extra = f" {m.node}:{m.state}" if isinstance(m, Heartbeat) else ""
                parts.append(f"{topic} {n / dt:.1f}/s age {age_ms:.1f} ms{extra}")
            log.info("topics: %s | decode errors %d", "; ".join(parts) or "none yet", self.sub.stats.decode_errors)
            self._last_counts = dict(self._counts)
            self._last_report = t

    def metrics(self) -> dict[str, float]:
        return {"decode_errors": float(self.sub.stats.decode_errors), "received": float(self.sub.stats.received)}
