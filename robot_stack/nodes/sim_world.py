"""Sim-world node: the simulated robot controller box and scene, in real time.

Each tick (``rate_hz``, default 500 Hz = the physics step) it applies the newest joint target from
the arm node's sim driver, steps physics as many times as needed to stay on the host clock, and
publishes ``sim/joint_state`` (every tick) and ``sim/state`` (full qpos for the camera renderers,
at ``state_rate_hz``) and ``sim/objects`` (ground truth for success checks, 10 Hz).

If physics falls behind the host clock by more than ``max_catchup_steps`` it does not silently
slow down: it counts a real-time violation, logs it, and re-anchors to the host clock.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robot_stack.drivers.sim_model import DEFAULT_ROBOT
from robot_stack.tasks.registry import canonical, task_class
from robot_stack.runtime.clock import now_ns
from robot_stack.drivers.sim_messages import JointState, JointTarget, ObjectState, SimCommand, SimState, arm_topic
from robot_stack.runtime.node import Node, NodeParams

log = logging.getLogger(__name__)


class SimArmParams(BaseModel):
    """One arm of a multi-arm sim world: its robot model and base pose in the world frame."""

    model_config = ConfigDict(extra="forbid")
    robot: str = Field("panda_robotiq", description="the arm's robot model (robot-stack robots lists them)")
    base: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 0.0, 0.0), description="base pose in the world frame: x y z (m), yaw about z (rad)"
    )

    def T_world_base(self):
        """(4, 4) pose of the arm's base in the world frame (``ArmPlacement.T_world_base``)."""
        from robot_stack.drivers.sim_model import ArmPlacement

        return ArmPlacement("arm", self.robot, tuple(self.base)).T_world_base()


class SimWorldParams(NodeParams):
    robot: str = Field(
        DEFAULT_ROBOT, description="the simulated robot (a robot model with a sim block; robot-stack robots lists them)"
    )
    rate_hz: float = Field(
        500.0, gt=0, le=2000, description="physics step rate on the host clock, Hz (500: a 2 ms step)"
    )
    state_rate_hz: float = Field(60.0, gt=0, le=500, description="full world state for the camera renderers, Hz")
    seed: int = Field(0, description="seed of the object placement and randomisation")
    task: str = Field(
        "reach",
        description="the task (a name in the task registry, robot_stack/tasks/registry.py) whose scene "
        "this world builds and whose success collect, deploy and the demo check on its ground truth "
        "(press: the cube's contact softness is random each episode, unseen by the cameras; "
        "lift: two arms lift a bar, a multi-arm world's task)",
    )
    arms: dict[str, SimArmParams] = Field(
        default_factory=dict,
        description="a multi-arm world (bimanual): arm name -> robot and base pose in the world "
        "frame; each arm node's sim driver names its arm (driver.arm). Empty: one arm, "
        "robot, whose base frame is the world frame",
    )
    max_catchup_steps: int = Field(
        20,
        ge=1,
        description="physics behind the host clock by more steps than this counts a real-time violation and re-anchors",
    )
    table_board: bool = Field(False, description="ChArUco board on the table (eye-in-hand calibration)")
    gripper_board: bool = Field(False, description="ChArUco board on the gripper (eye-to-hand calibration)")
    ur_emulator_host: str | None = Field(
        None,
        description="serve the arm as a UR e-Series controller (RTDE, dashboard, script port) on this "
        "address, for the ur driver; the sim driver's joint targets are then ignored",
    )
    ur_unlock_delay_s: float = Field(5.0, ge=0, description="UR emulator: protective stop unlock delay, s")

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v):
        from robot_stack.drivers.sim_model import ArmPlacement

        for name, a in v.items():
            ArmPlacement(name, a.robot, tuple(a.base))  # names and poses checked there
        return v

    @field_validator("task")
    @classmethod
    def _registered(cls, v: str) -> str:
        return canonical(v)

    @model_validator(mode="after")
    def _one_arm_features(self):
        need = task_class(self.task).arms
        if self.arms and (
            self.ur_emulator_host or self.table_board or self.gripper_board or (need == 1 and self.task != "reach")
        ):
            raise ValueError(
                "a multi-arm sim world has no UR emulator, calibration boards or one-arm tasks "
                "(task: reach or a several-arm task such as lift)"
            )
        if need > 1 and len(self.arms) != need:
            raise ValueError(
                f"task {self.task} needs {need} arms (arms: left and right), this world has {len(self.arms)}"
            )
        return self

    @field_validator("ur_emulator_host")
    @classmethod
    def _loopback(cls, v):
        if v is not None:
            from robot_stack.drivers.ur_emulator import check_loopback

            check_loopback(v)
        return v

    def scene(self):
        """The SceneSpec every process of this world builds (world and camera renderers)."""
        from robot_stack.drivers.sim_model import ArmPlacement, SceneSpec

        obj = task_class(self.task)().scene()  # what the task adds or changes (lift: the bar)
        return SceneSpec(
            robot=self.robot,
            table_board=self.table_board,
            gripper_board=self.gripper_board,
            arms=tuple(ArmPlacement(n, a.robot, tuple(a.base)) for n, a in self.arms.items()),
            **obj,
        )


class SimWorldNode(Node):
    """Owns the MuJoCo world; plays the robot controller box for the arm node's sim driver."""

    Params = SimWorldParams

    @classmethod
    def publishes(cls, params) -> list[str]:
        joints = [arm_topic(JointState.TOPIC, a) for a in params.arms] or [JointState.TOPIC]
        return [*joints, SimState.TOPIC, ObjectState.TOPIC]

    def configure(self) -> None:
        from robot_stack.drivers.sim_world import SimWorld

        self.world = SimWorld(self.params.scene(), seed=self.params.seed)
        self.rx = self.own(self.ctx.receiver())
        self.steps = 0
        self.t0 = now_ns()
        self.rt_violations = 0
        self._pairs_logged = 0  # robot contact pairs logged (SimWorld.robot_contact_pairs)
        self.lag_steps_max = 0
        self.targets = 0
        self.targets_ignored = 0
        self._state_every = max(1, round(self.params.rate_hz / self.params.state_rate_hz))
        self._obj_every = max(1, round(self.params.rate_hz / 10.0))
        self._tick = 0
        self._dt_ns = int(round(self.world.dt * 1e9))
        #: multi-arm worlds: arm -> rotation world -> its base frame (wrenches are reported in it)
        self._R_base_world = {a.name: a.T_world_base()[:3, :3].T for a in self.world.scene.arms}
        self.ur = None
        if self.params.ur_emulator_host:
            from robot_stack.drivers.ur_emulator import PERIOD_S, UrController, UrEmulator

            if abs(self.params.rate_hz * PERIOD_S - 1.0) > 1e-6:
                raise ValueError(
                    f"sim_world.ur_emulator_host needs rate_hz 500 (the e-Series controller rate), "
                    f"not {self.params.rate_hz:g}"
                )
            ctl = UrController(unlock_delay_s=self.params.ur_unlock_delay_s, world=self.world)
            self.ur = self.own(UrEmulator(self.params.ur_emulator_host, ctl).start(own_loop=False))

    def _inputs(self) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("sim_input", self._on_message, item[1])

    def _on_message(self, msg) -> None:
        if isinstance(msg, JointTarget) and self.ur is not None:
            self.targets_ignored += 1
            if self.targets_ignored == 1:
                log.warning("joint target from %s ignored: the arm is served as a UR controller", msg.source)
        elif isinstance(msg, JointTarget):
            arm = self.world.arms.get(msg.arm)
            if arm is None:
                self.targets_ignored += 1
                log.warning(
                    "ignored joint target for arm %r from %s: this world has the arms %s",
                    msg.arm,
                    msg.source,
                    sorted(self.world.arms),
                )
            elif msg.q.shape == (len(arm.qpos),) and np.all(np.isfinite(msg.q)) and np.isfinite(msg.gripper):
                self.world.set_target(msg.q, msg.gripper, msg.arm)
                self.targets += 1
            else:
                log.warning("ignored joint target of shape %s (finite: %s)", msg.q.shape, np.all(np.isfinite(msg.q)))
        elif isinstance(msg, SimCommand):
            task = task_class(self.params.task)()  # where its object is placed: cube_range, max_yaw
            pose = self.world.reset(
                None if msg.cube_pose is None else np.asarray(msg.cube_pose),
                cube_range=task.cube_range,
                max_yaw=task.max_yaw,
            )
            line = task.on_reset(self.world)  # what else the task randomises (press: the cube's softness)
            if line:
                log.info("%s", line)
            self.steps = 0
            self.t0 = now_ns()
            log.info("reset: cube at %s", np.round(pose[:3], 3).tolist())
            if self.ur is not None:
                self.ur.ctl.sync_to_world()

    def step(self) -> None:
        self._inputs()
        t = now_ns()
        due = (t - self.t0) // self._dt_ns - self.steps
        if due > self.params.max_catchup_steps:
            self.rt_violations += 1
            self.lag_steps_max = max(self.lag_steps_max, int(due))
            if self.rt_violations <= 5 or self.rt_violations % 100 == 0:
                log.warning(
                    "physics cannot keep real time: %d steps (%.1f ms) behind; re-anchoring (#%d)",
                    due,
                    due * self._dt_ns / 1e6,
                    self.rt_violations,
                )
            self.t0 += (due - 1) * self._dt_ns
            due = 1
        if self.ur is not None:
            self.ur.ctl.control()  # the emulated UR controller's period (this node runs at 500 Hz)
        if due > 0:
            self.world.step(int(due))
            self.steps += int(due)
            pairs = self.world.robot_contact_pairs
            while self._pairs_logged < len(pairs):
                log.warning("robot contact: %s with %s", *pairs[self._pairs_logged])
                self._pairs_logged += 1
        if self.ur is not None:
            self.ur.stream(self._tick)
        stamp = self.t0 + self.steps * self._dt_ns  # sim time on the host clock
        for name in self.world.arms:
            q, dq, tau, width = self.world.joint_state(name)
            w = self.world.tcp_wrench(name)
            R = self._R_base_world.get(name)
            if R is not None:  # the arm's sensor reports in its own base frame
                w = np.concatenate([R @ w[:3], R @ w[3:]])
            self.pub.publish(
                arm_topic(JointState.TOPIC, name),
                JointState(stamp_ns=stamp, q=q, dq=dq, tau=tau, gripper_width=width, wrench=w, arm=name),
            )
        if self._tick % self._state_every == 0:
            self.pub.publish(
                SimState.TOPIC, SimState(stamp_ns=stamp, qpos=self.world.data.qpos.copy(), step=self.steps)
            )
        if self._tick % self._obj_every == 0:
            sc = self.world.scene
            self.pub.publish(
                ObjectState.TOPIC,
                ObjectState(
                    stamp_ns=stamp,
                    cube_pose=self.world.cube_pose(),
                    target_xy=self.world.target_xy(),
                    target_half=sc.target_half,
                ),
            )
        self._tick += 1

    def metrics(self) -> dict[str, float]:
        wall = (now_ns() - self.t0) / 1e9
        return {
            "realtime_violations": float(self.rt_violations),
            "lag_steps_max": float(self.lag_steps_max),
            "sim_s": self.steps * self.world.dt,
            "wall_s": wall,
            "targets": float(self.targets),
            "robot_contacts": float(self.world.robot_contacts),
        }
