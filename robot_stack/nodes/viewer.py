"""Live view: camera streams (color, depth, intrinsics) and robot state in rerun.

Backends: spawn a rerun viewer window (a desktop with a display), connect to a running viewer
(``connect: rerun+http://HOST:9876/proxy``; over SSH forward that port), or save an ``.rrd``
recording to open later with ``rerun FILE.rrd`` (headless machines). Rerun is best effort: the
viewer subscribes like any reader and never slows a publisher.
"""

from __future__ import annotations

import logging

from pydantic import Field, model_validator

from robot_stack.runtime.node import Node, NodeParams
from robot_stack.comm.messages import CameraFrame, RobotState

log = logging.getLogger(__name__)


class ViewerParams(NodeParams):
    watch: list[str] = Field(min_length=1, description="nodes whose cameras / robot state to show")
    rate_hz: float = Field(15.0, gt=0, le=60, description="how often the watched streams are logged, Hz")
    spawn: bool = Field(False, description="open a rerun viewer window (needs a display)")
    connect: str | None = Field(None, description="a running viewer's URL (rerun+http://HOST:9876/proxy)")
    rrd_path: str | None = Field(None, description="write a .rrd recording instead (open it with rerun FILE)")

    @model_validator(mode="after")
    def _sink(self) -> ViewerParams:
        if sum([self.spawn, self.connect is not None, self.rrd_path is not None]) != 1:
            raise ValueError("choose exactly one of spawn: true, connect: URL, rrd_path: FILE")
        return self


class ViewerNode(Node):
    """Logs the newest camera frames and robot state of the watched nodes to rerun."""

    Params = ViewerParams

    def configure(self) -> None:
        try:
            import rerun as rr
        except ImportError:
            raise RuntimeError("the viewer needs rerun-sdk: pip install rerun-sdk") from None
        self.rr = rr
        self.own(rr, self._disconnect)
        rr.init(f"robot_stack/{self.ctx.config.name}", spawn=self.params.spawn)
        if self.params.connect:
            rr.connect_grpc(self.params.connect)
        elif self.params.rrd_path:
            rr.save(self.params.rrd_path)
        self.sub = self.own(self.ctx.subscriber(self.params.watch, (CameraFrame.TOPIC, RobotState.TOPIC)))
        self._seen: dict[str, int] = {}
        self.logged = 0

    def _new(self, topic: str):
        m = self.sub.latest(topic)
        if m is None or self._seen.get(topic) == m.seq:
            return None
        self._seen[topic] = m.seq
        return m

    def step(self) -> None:
        rr = self.rr
        for topic in self.sub.topics():
            m = self._new(topic)
            if m is None:
                continue
            rr.set_time("capture", timestamp=m.stamp_ns / 1e9)
            if topic.startswith(CameraFrame.TOPIC):
                base = topic
                h, w = m.color.shape[:2]
                rr.log(base, rr.Pinhole(image_from_camera=m.K, resolution=[w, h]))
                rr.log(f"{base}/color", rr.Image(m.color))
                if m.depth is not None:
                    rr.log(f"{base}/depth", rr.DepthImage(m.depth, meter=1.0 / m.depth_scale))
            else:
                rr.log("robot/tcp", rr.Points3D([m.ee_pose[:3]], radii=0.01))
                for i, q in enumerate(m.q):
                    rr.log(f"robot/q/{i + 1}", rr.Scalars(float(q)))
                rr.log("robot/gripper_width", rr.Scalars(float(m.gripper_width)))
            self.logged += 1

    def metrics(self) -> dict[str, float]:
        return {"logged": float(self.logged)}

    def _disconnect(self) -> None:
        try:
            self.rr.disconnect()
        except Exception:  # the viewer is gone already: nothing to release
            pass
