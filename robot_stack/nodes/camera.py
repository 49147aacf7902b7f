"""Camera node: owns one camera driver and publishes every fresh frame with its capture stamp.

Topic: ``camera/<camera_id>`` carrying :class:`~robot_stack.comm.messages.CameraFrame` (capture
stamp on the stack clock, the device's own stamp and frame counter). Frame health
(:class:`~robot_stack.control.camera_health.FrameHealth`): a repeated frame is counted and not
published, counter gaps, a low delivered rate and clock-mapping jumps are counted and logged; the
heartbeat carries them (``health.*``), the delivered rate (``rate_hz``) and the device clock
mapping's drift (``clock.drift_ppm``) and residual (``clock.residual_ms``).
"""

from __future__ import annotations

import logging
from pydantic import Field

from robot_stack.comm.messages import CameraFrame
from robot_stack.control.camera_health import FrameHealth
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.devices import CAMERA_DRIVERS
from robot_stack.runtime.node import Node, NodeParams

log = logging.getLogger(__name__)


#: a typed device config from the family's registry (a bare type name is short for {type: ...})
CameraDriverConfig, _driver_field = CAMERA_DRIVERS.field("synthetic")


class CameraParams(NodeParams):
    driver: CameraDriverConfig = _driver_field
    camera_id: str = Field(
        "cam0", pattern=r"^[a-z][a-z0-9_]*$", description="the camera's name: its topic is camera/<camera_id>"
    )
    width: int = Field(640, gt=0, le=4096, description="image width, pixels")
    height: int = Field(480, gt=0, le=4096, description="image height, pixels")
    rate_hz: float = Field(30.0, gt=0, le=1000, description="frame rate asked of the driver, Hz")
    depth: bool = Field(True, description="publish depth aligned to color (where the driver has it)")

    def references(self) -> dict[str, str]:
        return self.driver.references()


class CameraNode(Node):
    """Publishes frames of one camera at ``rate_hz`` on ``camera/<camera_id>``."""

    Params = CameraParams
    pub_hwm = 64  # frames are MBs: a subscriber that falls 64 frames behind loses the newest

    @classmethod
    def publishes(cls, params) -> list[str]:
        return [CameraFrame.topic(params.camera_id)]

    def configure(self) -> None:
        self.driver = self.params.driver.build(self.ctx, self.params)
        self.driver.start()
        self.own(self.driver, self.driver.stop)
        self.topic = CameraFrame.topic(self.params.camera_id)
        self.published = 0
        self.missed = 0
        self.health = FrameHealth(self.params.camera_id, self.params.rate_hz, self.driver.has_counter)

    def step(self) -> None:
        f = self.driver.read(timeout_s=0.5 / self.rate_hz)
        t = now_ns()
        self.health.tick(t)
        if f is None:
            self.missed += 1
            return
        if self.driver.clock is not None:
            self.health.clock_jumps(self.driver.clock.jumps)
        if not self.health.check(f.frame_index, f.color, t):
            return  # the same frame again: not published (its age shows the controller a stale camera)
        self.pub.publish(
            self.topic,
            CameraFrame(
                stamp_ns=f.stamp_ns,
                camera_id=self.params.camera_id,
                frame_index=f.frame_index,
                device_stamp_ns=f.device_stamp_ns,
                color=f.color,
                depth=f.depth,
                depth_scale=self.driver.depth_scale,
                K=self.driver.K,
            ),
        )
        self.published += 1

    def metrics(self) -> dict[str, float]:
        m = {"frames": float(self.published), "missed": float(self.missed)} | self.health.metrics()
        if (clock := self.driver.clock) is not None:
            m |= {"clock.drift_ppm": clock.drift_ppm, "clock.residual_ms": clock.residual_ns / 1e6}
        return m
