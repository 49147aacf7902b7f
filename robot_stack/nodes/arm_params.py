"""The arm node's settings: driver, robot model, servo rate, safety limits, real-time settings."""

from __future__ import annotations

from pydantic import Field

from robot_stack.control.collision import CollisionConfig
from robot_stack.control.safety import SafetyConfig
from robot_stack.runtime.devices import ARM_DRIVERS
from robot_stack.runtime.node import NodeParams
from robot_stack.runtime.realtime import RealtimeConfig

#: a typed device config from the family's registry (a bare type name is short for {type: ...})
ArmDriverConfig, _driver_field = ARM_DRIVERS.field("sim")


class ArmParams(NodeParams):
    driver: ArmDriverConfig = _driver_field
    robot: str | None = Field(
        None,
        description="robot model: a shipped name (robot-stack robots) or a "
        "description YAML; default: the driver's (sim: its world's robot, franka: fr3_hand)",
    )
    rate_hz: float = Field(500.0, gt=0, le=2000, description="servo loop rate, Hz (the driver's command rate)")
    state_rate_hz: float = Field(250.0, gt=0, le=2000, description="robot/state publish rate, Hz")
    startup_timeout_s: float = Field(20.0, gt=0, description="wait for the driver's first measured state, s")
    ik_iters_per_tick: int = Field(4, ge=1, le=50, description="IK iterations per servo tick for Cartesian schedules")
    check_budget: float = Field(0.25, gt=0, le=0.8, description="fraction of a servo period spent checking schedules")
    max_pending: int = Field(16, ge=1, description="schedules waiting for their checks; more are refused")
    safety: SafetyConfig = Field(
        default_factory=SafetyConfig,
        description="limits and checks every schedule passes before the driver (the safety contract); "
        "each key left out takes the robot description's safety default (robot-stack robots)",
    )
    collision: CollisionConfig = Field(
        default_factory=CollisionConfig,
        description="the scene around the arm (table top, obstacles in the base frame) and the clearances "
        "every schedule and servo command keeps; each key left out takes the robot description's default",
    )
    realtime: RealtimeConfig = Field(
        default_factory=RealtimeConfig,
        description="SCHED_FIFO priority, CPU affinity, locked memory for the servo loop",
    )
    spy_file: str | None = Field(None, description="record every driver command into this .npz at stop (fault tests)")

    def references(self) -> dict[str, str]:
        """The driver's nodes, and the other arms whose states the collision checks read."""
        return {**self.driver.references(), **{o.node: "arm" for o in self.collision.arms}}

    def problems(self, config) -> list[str]:
        """The arm's robot model must exist and be valid (its files are read at start), and a sim
        arm must be the robot its world plays."""
        from robot_stack.control.robot_model import RobotModelError, load_description

        try:
            robot = self.robot_name(config)
            load_description(robot)
            self.effective_safety(config)
            self.effective_collision(config)
        except RobotModelError as e:
            return [f"robot: {' '.join(str(e).split())}"]
        except ValueError as e:  # the driver names no robot its device has (a sim arm the world lacks)
            return [f"driver: {' '.join(str(e).split())}"]
        if self.driver.type == "sim" and self.driver.world in config.nodes:  # a sim arm is its world's robot
            plays = self.driver.default_robot(config)
            if robot != plays:
                return [f"robot = {robot!r}: the sim world {self.driver.world!r} plays {plays!r}"]
        return []

    def effective_safety(self, config=None) -> SafetyConfig:
        """The limits this arm enforces: the setup's ``safety`` keys over the robot description's
        ``safety`` defaults (:meth:`SafetyConfig.over`).

        Raises:
            RobotModelError: no robot model, or its description does not load.
        """
        from robot_stack.control.robot_model import load_description

        desc, _ = load_description(self.robot_name(config))
        return self.safety.over(desc.safety)

    def effective_collision(self, config=None) -> CollisionConfig:
        """The scene and clearances this arm checks: the setup's ``collision`` keys over the robot
        description's ``collision`` defaults (:meth:`CollisionConfig.over`).

        Raises:
            RobotModelError: no robot model, or its description does not load.
        """
        from robot_stack.control.robot_model import load_description

        desc, _ = load_description(self.robot_name(config))
        return self.collision.over(desc.collision)

    def robot_name(self, config=None) -> str:
        """The robot model this arm uses: ``robot``, or the driver's default given the setup's
        config (the sim driver: the robot its sim world plays; franka: fr3_hand or panda_hand).

        Raises:
            RobotModelError: neither names one.
        """
        from robot_stack.control.robot_model import RobotModelError

        name = self.robot or self.driver.default_robot(config)
        if name is None:
            raise RobotModelError(f"arm driver {self.driver.type} implies no robot model: set the arm node's robot")
        return name
