"""Drivers that talk to the sim-world process as if it were robot hardware.

- :class:`SimArmDriver`: joint state in (``sim/joint_state``), servo-rate joint targets out
  (lossless channel to the world's input), exactly like a robot controller box.
- :class:`SimCameraDriver`: renders one of the world's cameras in this process from the world's
  published state (``sim/state``), so rendering runs beside physics, never inside it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.devices import DeviceConfig
from robot_stack.drivers.arm import ArmDriver, ArmDriverError, JointReading
from robot_stack.drivers.camera import CameraDriver, Frame
from robot_stack.drivers.sim_messages import JointTarget
from robot_stack.runtime.clock import now_ns
from robot_stack.comm.transport import Sender, Subscriber, TransportTimeout
from robot_stack.drivers.sim_messages import JointState, SimState


class SimArmDriver(ArmDriver):
    """Arm of the sim world.

    Args:
        state_endpoint: the sim world's PUB endpoint.
        command_endpoint: the sim world's input endpoint.
        source: name used in message headers.
        robot: the robot model the world plays for this arm.
        arm: its name in a multi-arm world ("" in a one-arm world).
    """

    #: joint state older than this means the world is gone: a driver fault, ns
    STALE_NS = 250_000_000

    def __init__(
        self, state_endpoint: str, command_endpoint: str, source: str, robot: str = "panda_robotiq", arm: str = ""
    ):
        from robot_stack.drivers.sim_model import sim_description
        from robot_stack.drivers.sim_messages import arm_topic

        desc = sim_description(robot)  # the robot the sim world plays (the robot's controller box)
        # joint limits are the robot model's, which the arm node holds; the controller box adds none
        self.n_joints = len(desc.joints)
        self.lower, self.upper = np.full(self.n_joints, -np.inf), np.full(self.n_joints, np.inf)
        self.stroke = desc.gripper.stroke_m
        self.arm, self._topic = arm, arm_topic(JointState.TOPIC, arm)
        self._sub = Subscriber([state_endpoint], (self._topic,), name=f"{source}<-sim")
        self._tx = Sender(command_endpoint, source, timeout_s=0.05)
        self._last: JointReading | None = None
        self.send_timeouts = 0

    def start(self, timeout_s: float = 10.0) -> JointReading:
        msg = self._sub.wait_for(self._topic, timeout_s)
        if msg is None:
            raise ArmDriverError(
                f"no joint state from the sim world within {timeout_s} s (is it running?"
                + (f" does it have an arm {self.arm!r}?)" if self.arm else ")")
            )
        first = self.read()
        # the command channel connects asynchronously: wait until the first target (the measured
        # state, so nothing moves) is accepted
        deadline = now_ns() + int(timeout_s * 1e9)
        while True:
            try:
                self._tx.send(
                    JointTarget.TOPIC,
                    JointTarget(q=first.q, gripper=min(1.0, first.gripper_width / self.stroke), arm=self.arm),
                )
                return first
            except TransportTimeout:
                if now_ns() > deadline:
                    raise ArmDriverError("the sim world does not accept joint targets") from None

    def read(self) -> JointReading:
        m = self._sub.latest(self._topic)
        if m is None:
            raise ArmDriverError("no joint state yet")
        if now_ns() - m.stamp_ns > self.STALE_NS:  # the world (the robot's controller box) went silent
            raise ArmDriverError(f"no joint state from the sim world for {(now_ns() - m.stamp_ns) / 1e6:.0f} ms")
        if self._last is None or self._last.stamp_ns != m.stamp_ns:
            self._last = JointReading(
                m.stamp_ns,
                np.array(m.q),
                np.array(m.dq),
                m.gripper_width,
                None if m.wrench is None else np.array(m.wrench),
            )
        return self._last

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        """Send a target; a send that times out is counted and dropped (the controller box holds its
        last target, as a real one does when a command packet is late)."""
        try:
            self._tx.send(
                JointTarget.TOPIC, JointTarget(q=np.asarray(q, np.float64), gripper=float(gripper_open), arm=self.arm)
            )
        except TransportTimeout:
            self.send_timeouts += 1

    def stop(self) -> None:
        self._sub.close()
        self._tx.close()


class SimCameraDriver(CameraDriver):
    """One sim camera rendered in this process.

    Args:
        state_endpoint: the sim world's PUB endpoint (``sim/state``).
        camera: MJCF camera name ("scene" or "handcam_rgb").
        width, height: render size, pixels.
        multisample: MSAA samples (0: none, like a real camera; see ``SimRenderer``).
    """

    def __init__(
        self,
        state_endpoint: str,
        camera: str,
        width: int,
        height: int,
        scene=None,
        inject_latency_s: float = 0.0,
        multisample: int = 0,
    ):
        self.endpoint, self.camera = state_endpoint, camera
        self.multisample = multisample
        self.width, self.height = width, height
        self.scene = scene
        # test hook: stamp frames this much later than their true capture time, like an
        # uncalibrated camera whose stamps are receive times
        self.inject_latency_ns = int(inject_latency_s * 1e9)
        self.depth_scale = 0.001
        self._k = 0
        self._last_seq = -1

    def start(self) -> None:
        from robot_stack.drivers.sim_world import SimRenderer, SimWorld

        from robot_stack.drivers.sim_model import SceneSpec

        self._world = SimWorld(self.scene or SceneSpec())
        try:
            self._world.model.camera(self.camera)
        except KeyError:
            raise ValueError(f"the sim scene has no camera {self.camera!r}") from None
        self._renderer = SimRenderer(self._world, self.width, self.height, multisample=self.multisample)
        self.K = self._renderer.intrinsics(self.camera)
        self._sub = Subscriber([self.endpoint], (SimState.TOPIC,), name=f"camera-{self.camera}")

    def read(self, timeout_s: float) -> Frame | None:
        from robot_stack.drivers.sim_world import depth_to_mm

        st = self._sub.wait_for(SimState.TOPIC, timeout_s, newer_than_seq=self._last_seq)
        if st is None:
            return None
        self._last_seq = st.seq
        self._world.set_qpos(np.asarray(st.qpos))
        color, depth = self._renderer.render(self.camera)
        self._k += 1
        # capture time = the time of the physics state that was rendered
        return Frame(
            stamp_ns=st.stamp_ns + self.inject_latency_ns, frame_index=self._k, color=color, depth=depth_to_mm(depth)
        )

    def stop(self) -> None:
        if hasattr(self, "_sub"):
            self._sub.close()
        if hasattr(self, "_renderer"):
            self._renderer.close()


__all__ = ["SimArmDriver", "SimCameraDriver"]


class SimArmConfig(DeviceConfig):
    """arm driver ``sim``: an arm of the sim world (``world``: its node name; ``arm``: which one,
    in a multi-arm world)."""

    type: Literal["sim"] = "sim"
    world: str = Field("sim", description="node name of the sim world")
    arm: str = Field(
        "", description="the arm's name in a multi-arm sim world (its params.arms); empty for a one-arm world"
    )

    def references(self) -> dict[str, str]:
        return {self.world: "sim_world"}

    def default_robot(self, config) -> str | None:
        """The robot the sim world plays for this arm (its typed params' ``robot``, or the arm's
        in ``arms``).

        Raises:
            ValueError: the world has no such arm, or has several and none is named.
        """
        from robot_stack.drivers.sim_model import DEFAULT_ROBOT

        nc = None if config is None else config.nodes.get(self.world)
        if nc is None or nc.kind != "sim_world":  # (check reports the dangling reference)
            return DEFAULT_ROBOT
        arms = nc.typed.arms
        if not arms and self.arm:
            raise ValueError(f"driver.arm {self.arm!r}: sim world {self.world!r} has one arm (no params.arms)")
        if arms and self.arm not in arms:
            raise ValueError(f"driver.arm {self.arm!r}: sim world {self.world!r} has the arms {sorted(arms)}")
        return arms[self.arm].robot if arms else nc.typed.robot

    def build(self, ctx, params) -> SimArmDriver:
        cfg, rd = ctx.config, ctx.run_dir
        return SimArmDriver(
            cfg.pub_endpoint(self.world, rd),
            cfg.in_endpoint(self.world, rd),
            ctx.name,
            robot=self.default_robot(cfg),
            arm=self.arm,
        )


class SimCameraConfig(DeviceConfig):
    """camera driver ``sim``: one camera of the sim world, rendered in the camera node's process."""

    type: Literal["sim"] = "sim"
    world: str = Field("sim", description="node name of the sim world")
    camera: str = Field("scene", description="MJCF camera name (scene, handcam_rgb)")
    inject_latency_s: float = Field(0.0, ge=0, description="test hook: stamp frames this late")
    multisample: int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "MSAA samples of the render (0: none, as a real camera; 4: smoother edges, for ChArUco corner "
            "accuracy). Mesa llvmpipe, one thread, 320x240: the scene camera renders in about 32 ms with 0 "
            "and 69 ms with 4, the wrist camera in 17 and 21 ms"
        ),
    )

    def references(self) -> dict[str, str]:
        return {self.world: "sim_world"}

    def build(self, ctx, params) -> SimCameraDriver:
        scene = ctx.config.nodes[self.world].typed.scene()
        return SimCameraDriver(
            ctx.config.pub_endpoint(self.world, ctx.run_dir),
            self.camera,
            params.width,
            params.height,
            scene=scene,
            inject_latency_s=self.inject_latency_s,
            multisample=self.multisample,
        )
