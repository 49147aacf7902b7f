"""Camera node: owns one camera driver and publishes every frame with its capture stamp.

Topic: ``camera/<camera_id>`` carrying :class:`~robot_stack.comm.messages.CameraFrame`.
"""

from __future__ import annotations

import logging
from pydantic import Field

from robot_stack.runtime.devices import CAMERA_DRIVERS
from robot_stack.comm.messages import CameraFrame
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

    def step(self) -> None:
        f = self.driver.read(timeout_s=0.5 / self.rate_hz)
        if f is None:
            self.missed += 1
            return
        self.pub.publish(
            self.topic,
            CameraFrame(
                stamp_ns=f.stamp_ns,
                camera_id=self.params.camera_id,
                frame_index=f.frame_index,
                color=f.color,
                depth=f.depth,
                depth_scale=self.driver.depth_scale,
                K=self.driver.K,
            ),
        )
        self.published += 1

    def metrics(self) -> dict[str, float]:
        return {"frames": float(self.published), "missed": float(self.missed)}
