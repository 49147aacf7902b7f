"""Camera node: owns one camera driver and publishes every frame with its capture stamp.

Topic: ``camera/<camera_id>`` carrying :class:`~robot_stack.messages.CameraFrame`.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from ..messages import CameraFrame
from ..node import Node, NodeParams

log = logging.getLogger(__name__)


class CameraParams(NodeParams):
    driver: Literal["synthetic", "sim", "realsense", "opencv"] = "synthetic"
    camera_id: str = Field("cam0", pattern=r"^[a-z][a-z0-9_]*$")
    width: int = Field(640, gt=0, le=4096)
    height: int = Field(480, gt=0, le=4096)
    rate_hz: float = Field(30.0, gt=0, le=1000)
    depth: bool = True
    sim_world: str = Field("sim", description="driver sim: node name of the sim world")
    sim_camera: str = Field("scene", description="driver sim: MJCF camera name")
    sim_inject_latency_s: float = Field(0.0, ge=0, description="driver sim: test hook, stamp frames this late")
    serial: str | None = Field(None, description="driver realsense: device serial (None = first found)")
    playback_file: str | None = Field(None, description="driver realsense: .bag/.db3 recording to play")
    loop_playback: bool = True
    device: int | str = Field(0, description="driver opencv: device index or path")


def make_driver(p: CameraParams, ctx=None):
    """Build the camera driver named by ``p.driver``."""
    if p.driver == "synthetic":
        from robot_stack.drivers.camera import SyntheticCamera

        return SyntheticCamera(p.width, p.height, p.rate_hz, p.depth)
    if p.driver == "sim":
        from robot_stack.drivers.sim import SimCameraDriver

        from robot_stack.nodes.sim_world import SimWorldParams

        world = ctx.config.nodes.get(p.sim_world)
        if world is None or world.kind != "sim_world":
            raise ValueError(f"camera driver sim: {p.sim_world!r} is not a sim_world node of this config")
        scene = SimWorldParams.model_validate(world.params).scene()
        return SimCameraDriver(ctx.config.pub_endpoint(p.sim_world, ctx.run_dir), p.sim_camera, p.width, p.height,
                               scene=scene, inject_latency_s=p.sim_inject_latency_s)
    if p.driver == "realsense":
        from robot_stack.drivers.realsense import RealSenseCamera

        return RealSenseCamera(p.width, p.height, int(p.rate_hz), serial=p.serial,
                               playback_file=p.playback_file, loop=p.loop_playback)
    if p.driver == "opencv":
        from robot_stack.drivers.opencv_camera import OpenCVCamera

        return OpenCVCamera(p.device, p.width, p.height, p.rate_hz)
    raise ValueError(f"unknown camera driver {p.driver!r}")  # pragma: no cover


class CameraNode(Node):
    """Publishes frames of one camera at ``rate_hz`` on ``camera/<camera_id>``."""

    Params = CameraParams

    def configure(self) -> None:
        self.driver = make_driver(self.params, self.ctx)
        self.driver.start()
        self.topic = f"camera/{self.params.camera_id}"
        self.published = 0
        self.missed = 0

    def step(self) -> None:
        f = self.driver.read(timeout_s=0.5 / self.rate_hz)
        if f is None:
            self.missed += 1
            return
        self.pub.publish(self.topic, CameraFrame(
            stamp_ns=f.stamp_ns, camera_id=self.params.camera_id, frame_index=f.frame_index,
            color=f.color, depth=f.depth, depth_scale=self.driver.depth_scale, K=self.driver.K,
        ))
        self.published += 1

    def metrics(self) -> dict[str, float]:
        return {"frames": float(self.published), "missed": float(self.missed)}

    def shutdown(self) -> None:
        if hasattr(self, "driver"):
            self.driver.stop()
