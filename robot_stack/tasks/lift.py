"""The bimanual lift task (``lift``; ``robot-stack demo --task bimanual``) and its two-arm scripted
expert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from robot_stack.comm.messages import RobotState, TeleopCommand
from robot_stack.tasks.base import OBJECTS_TOPIC, Expert, carrot_step
from robot_stack.tasks.reach import ReachTask


@dataclass(frozen=True)
class LiftTask(ReachTask):
    """Bimanual: two arms grasp a bar at its two ends and lift it together, level.

    The bar (``bar_half`` half sizes, along the world y axis between the arms, ``bar_mass``) lies
    at a random position in ``cube_range`` and yaw within +-``max_yaw`` (rad) each episode.
    Success (sim ground truth, world frame): the bar's centre is at least ``lift_height`` above
    where it lay and its long axis is within ``max_tilt`` (rad) of horizontal, held ``hold_s``:
    one arm lifting alone tilts it, so both must lift. ``error_mm`` is how far the bar's centre
    is above where it lay, mm.

    Expert (``teleop/scripted.py: LiftExpert``): each arm's grasp point is ``grasp_offset`` from
    the bar's centre along its axis; fingers close across the bar (the TCP turned 90 deg about z
    from the arm's home orientation, plus the bar's yaw); ``approach_height`` over the grasp
    points, down to them, close, lift to ``carry_height`` above them, hold.
    """

    cube_range = ((0.45, 0.55), (-0.03, 0.03))
    max_yaw: float = 0.17  # rad, about 10 deg
    bar_half: tuple[float, float, float] = (0.02, 0.18, 0.02)
    bar_mass: float = 0.15
    grasp_offset: float = 0.13
    approach_height: float = 0.10
    grasp_height: float = 0.0
    carry_height: float = 0.12
    lift_height: float = 0.06
    max_tilt: float = 0.17  # rad, about 10 deg
    hold_s: float = 0.5

    error_name = "bar lift"
    grasps = True

    def near_goal(self, error: float) -> bool:
        """The bar's centre rose at least half the lift height (``error_mm`` is its height, mm)."""
        return error >= 1e3 * self.lift_height / 2

    name = "lift"
    text = "two Pandas lift a bar together, level (random pose, seen through the top camera)"
    setup: ClassVar[str | None] = "sim_bimanual_lift.yaml"
    arms: ClassVar[int] = 2
    demo_quick: ClassVar[dict] = {
        "demos": 2,
        "train_steps": 100,
        "eval_episodes": 1,
        "max_episode_s": 10.0,
        "collect_episode_s": 20.0,
    }
    demo_full: ClassVar[dict] = {
        "demos": 40,
        "train_steps": 3000,
        "eval_episodes": 20,
        "max_episode_s": 20.0,
        "collect_episode_s": 20.0,
    }

    def scene(self) -> dict:
        """The object is the bar: ``bar_half`` half sizes (m) and ``bar_mass`` (kg)."""
        return {"cube_half": tuple(self.bar_half), "cube_mass": self.bar_mass}

    def expert(self, device, bases: dict | None = None) -> Expert:
        if bases is None:
            raise ValueError("the lift expert needs the two arms' base poses in the world")
        return LiftExpert(bases, self, speed=device.speed, seed=device.seed)

    def start_pose(self, rng: np.random.Generator, orientation: np.ndarray) -> None:
        """Episodes start with every arm at its home posture (no start pose)."""
        return None

    def lifted(self, bar_pose: np.ndarray, bar_start_xyz: np.ndarray) -> bool:
        """True when the bar (pose (7,) [x y z qx qy qz qw]) is ``lift_height`` above its start
        centre (3,) and level within ``max_tilt``."""
        from scipy.spatial.transform import Rotation

        p = np.asarray(bar_pose, float)
        axis = Rotation.from_quat(p[3:]).apply([0.0, 1.0, 0.0])
        tilt = float(np.arcsin(min(1.0, abs(axis[2]))))
        return bool(p[2] - float(bar_start_xyz[2]) >= self.lift_height and tilt <= self.max_tilt)

    def achieved(self, state, obj, cube_start_xyz: np.ndarray) -> bool:
        return self.lifted(obj.cube_pose, cube_start_xyz)

    def error_mm(self, state, obj) -> float:
        """Height of the bar's centre above the table's rest height, mm."""
        return (float(obj.cube_pose[2]) - self.bar_half[2]) * 1e3


class LiftExpert(Expert):
    """Bimanual lift demonstrations (:class:`~robot_stack.tasks.definitions.LiftTask`): both arms move in
    lockstep through the phases, each to its own grasp point at the bar end nearest its base.

    Phases: ``approach`` (``approach_height`` over the grasp points, each with a random per-episode
    offset; the TCP turns at ``turn_speed`` to close across the bar: its home orientation turned
    90 deg plus the bar's yaw about z), ``descend`` (down to the grasp points; waits for both TCPs,
    within ``tol``, at most ``wait_s``), ``close`` (``close_s``), ``lift`` (``carry_height`` over
    the grasp points at ``lift_speed``, both carrots together), ``hold`` (``hold_s``), then
    ``episode_stop`` once, holding the bar up. Goals follow the bar's ground truth until the grasp.

    As a teleop device it polls once per period and returns one ``ee_absolute`` command per arm
    (``TeleopCommand.arm`` = the arm node), each in that arm's base frame.

    Args:
        arms: arm node -> (4, 4) pose of its base in the world frame (the sim world's placement).
        task: the bar, heights and offsets. speed: carrot speed, m/s. lift_speed: while lifting, m/s.
        turn_speed: TCP turn rate, rad/s. close_s, hold_s: waits, s. tol, wait_s: arrival check, m and s.
        jitter: std of the per-arm approach offset, m. seed: RNG seed.
    """

    PHASES = ("approach", "descend", "close", "lift", "hold")

    def __init__(
        self,
        arms: dict[str, np.ndarray],
        task: LiftTask = LiftTask(),
        speed: float = 0.15,
        lift_speed: float = 0.08,
        turn_speed: float = 1.5,
        close_s: float = 0.7,
        hold_s: float = 1.0,
        tol: float = 0.006,
        wait_s: float = 1.5,
        jitter: float = 0.01,
        seed: int = 0,
    ):
        if len(arms) != 2:
            raise ValueError(f"the lift expert drives two arms, got {list(arms)}")
        self.T = {a: np.asarray(T, float) for a, T in arms.items()}
        self.task, self.speed, self.lift_speed, self.turn_speed = task, speed, lift_speed, turn_speed
        self.close_s, self.hold_s, self.tol, self.wait_s, self.jitter = close_s, hold_s, tol, wait_s, jitter
        self.rng = np.random.default_rng(seed)
        self.active = False
        self.reset()

    def reset(self) -> None:
        self.carrot: dict[str, np.ndarray] = {}  # world frame
        self.rot: dict[str, Rotation] = {}  # world frame
        self.home_rot: dict[str, Rotation] = {}
        self.offset: dict[str, np.ndarray] = {}
        self.phase, self.t_phase = 0, 0.0
        self.grasp: dict[str, np.ndarray] | None = None  # grasp points, frozen at the grasp
        self.grasp_rot: Rotation | None = None
        self.done = False

    def on_episode(self, kind: str) -> None:
        self.active = kind == "start"
        self.reset()

    def metrics(self) -> dict[str, float]:
        return {"active": float(self.active), "phase": float(self.phase)}

    def poll(self, inputs) -> list[TeleopCommand] | None:
        if not self.active:
            return None
        obj = inputs.latest(OBJECTS_TOPIC)
        states = {a: inputs.latest_from(a, RobotState.TOPIC) for a in self.T}
        if obj is None or any(s is None for s in states.values()):
            return None
        return self.step(
            {a: np.asarray(s.ee_pose, float) for a, s in states.items()},
            np.asarray(obj.cube_pose, float),
            inputs.period_s,
        )

    def _to_world(self, arm: str, pose: np.ndarray) -> tuple[np.ndarray, Rotation]:
        T = self.T[arm]
        return T[:3, :3] @ pose[:3] + T[:3, 3], Rotation.from_matrix(T[:3, :3]) * Rotation.from_quat(pose[3:])

    def _to_base(self, arm: str, p: np.ndarray, r: Rotation) -> np.ndarray:
        T = self.T[arm]
        Rb = T[:3, :3].T
        return np.r_[Rb @ (p - T[:3, 3]), (Rotation.from_matrix(Rb) * r).as_quat()]

    def grasp_points(self, bar_pose: np.ndarray) -> tuple[dict[str, np.ndarray], Rotation]:
        """Each arm's grasp point (3,) in the world frame (the bar end nearest its base) and the
        bar's yaw rotation (about world z; its axis folded into +-90 deg)."""
        axis = Rotation.from_quat(bar_pose[3:]).apply([0.0, 1.0, 0.0])
        yaw = float(np.arctan2(-axis[0], axis[1]))
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
        ax = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        pts = {}
        for a, T in self.T.items():
            side = np.sign(np.dot(T[:3, 3] - bar_pose[:3], ax)) or 1.0
            pts[a] = bar_pose[:3] + side * self.task.grasp_offset * ax + np.r_[0, 0, self.task.grasp_height]
        return pts, Rotation.from_euler("z", yaw)

    def step(self, tcp: dict[str, np.ndarray], bar_pose: np.ndarray, period_s: float) -> list[TeleopCommand]:
        """One period: TCP poses (7,) per arm in its base frame and the bar pose (7,) in the world
        frame -> one command per arm (its base frame); ``episode_stop`` on the first after the hold."""
        t = self.task
        if not self.carrot:
            for a in self.T:
                p, r = self._to_world(a, tcp[a])
                self.carrot[a], self.rot[a], self.home_rot[a] = p, r, r
                self.offset[a] = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
        pts, yaw = self.grasp_points(bar_pose) if self.grasp is None else (self.grasp, self.grasp_rot)
        name = self.PHASES[self.phase]
        lift = np.r_[0, 0, t.carry_height] if name in ("lift", "hold") else np.zeros(3)
        goals = {
            a: pts[a] + (np.r_[0, 0, t.approach_height] + self.offset[a] if name == "approach" else lift)
            for a in self.T
        }
        speed = self.lift_speed if name == "lift" else self.speed
        arrived_all, press = True, False
        for a in self.T:
            d = goals[a] - self.carrot[a]
            dist = float(np.linalg.norm(d))
            step = carrot_step(self.carrot[a], self._to_world(a, tcp[a])[0], speed * period_s)
            if dist <= step:
                self.carrot[a] = goals[a].copy()
            else:
                self.carrot[a] = self.carrot[a] + d / dist * step
                arrived_all = False
            want = yaw * Rotation.from_euler("z", np.pi / 2) * self.home_rot[a]
            turn = (want * self.rot[a].inv()).magnitude()
            k = min(1.0, self.turn_speed * period_s / max(turn, 1e-9))
            self.rot[a] = Slerp([0.0, 1.0], Rotation.concatenate([self.rot[a], want]))([k])[0]
            arrived_all &= turn <= self.turn_speed * period_s
        if arrived_all:
            self.t_phase += period_s
            at = all(np.linalg.norm(self._to_world(a, tcp[a])[0] - goals[a]) < self.tol for a in self.T)
            advance = {
                "approach": True,
                "descend": at or self.t_phase >= self.wait_s,
                "close": self.t_phase >= self.close_s,
                "lift": True,
                "hold": False,
            }[name]
            if name == "descend" and advance:
                self.grasp, self.grasp_rot = pts, yaw
            if name == "hold" and self.t_phase >= self.hold_s and not self.done:
                self.done = press = True
            elif advance:
                self.phase, self.t_phase = self.phase + 1, 0.0
        grip = 0.0 if name in ("close", "lift", "hold") else 1.0
        out = [
            TeleopCommand(kind="ee_absolute", value=self._to_base(a, self.carrot[a], self.rot[a]), gripper=grip, arm=a)
            for a in self.T
        ]
        if press:
            out[0].buttons = ["episode_stop"]
        return out
