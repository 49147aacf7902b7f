"""Scripted experts for the sim tasks (reach, pick-and-place, press, the bimanual lift), driving the
same teleop path as a person.

It reads the cube's ground-truth pose from the sim world (``sim/objects``, privileged: only the
expert sees it, the policy sees cameras) and the measured TCP from the arm, and emits absolute
end-effector targets (``ee_absolute``) that move a carrot at constant speed: first to a point above
the cube, then straight down to the pre-grasp height. When the TCP has rested at the goal it
presses ``episode_stop`` once, as a person would at the end of a demonstration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from robot_stack.tasks.definitions import LiftTask, PickTask, PressTask, ReachTask
from robot_stack.comm.messages import RobotState, TeleopCommand
from robot_stack.drivers.sim_messages import ObjectState

from .base import TeleopConfig, TeleopDevice, TeleopInputs


class _SimExpert(TeleopDevice):
    """A scripted expert as a teleop device: it acts between an episode's start and its stop (the
    recorder's episode events reach the teleop node), each period from the measured TCP
    (``robot/state``) and the sim's object ground truth (``sim/objects``) through
    :meth:`command`."""

    active = False

    def reset(self) -> None:
        """Forget the episode."""

    def on_episode(self, kind: str) -> None:
        self.active = kind == "start"
        self.reset()

    def poll(self, inputs: TeleopInputs) -> TeleopCommand | None:
        """One period's command while an episode runs and both the TCP and the objects are known."""
        if not self.active:
            return None
        st, obj = inputs.latest(RobotState.TOPIC), inputs.latest(ObjectState.TOPIC)
        if st is None or obj is None:
            return None
        return self.command(st, obj, inputs.period_s)

    def command(self, state: RobotState, obj: ObjectState, period_s: float) -> TeleopCommand:
        raise NotImplementedError


class ReachExpert(_SimExpert):
    """Carrot-following reach demonstrations.

    As a teleop device it acts between an episode's start and its stop (the recorder's episode
    events reach the teleop node), reading the measured TCP (``robot/state``) and the cube's ground
    truth (``sim/objects``) each period.

    Args:
        task: the task (approach and grasp heights).
        speed: carrot speed, m/s.
        settle_s: time the TCP must stay within ``tol`` of the goal before ``episode_stop``, s.
        tol: goal tolerance, m.
        jitter: std (m) of a random offset of the approach point per episode (varied demos).
        seed: RNG seed.
    """

    def __init__(
        self,
        task: ReachTask = ReachTask(),
        speed: float = 0.15,
        settle_s: float = 0.4,
        tol: float = 0.004,
        jitter: float = 0.01,
        seed: int = 0,
    ):
        self.task, self.speed, self.settle_s, self.tol, self.jitter = task, speed, settle_s, tol, jitter
        self.rng = np.random.default_rng(seed)
        self.active = False  # as a device: between episode start and stop
        self.reset()

    def reset(self) -> None:
        """Forget the episode (call when a new episode starts)."""
        self.carrot: np.ndarray | None = None
        self.orientation: np.ndarray | None = None
        self.offset = np.zeros(3)
        self.phase = 0
        self.settled_s = 0.0
        self.done = False

    def command(self, state: RobotState, obj: ObjectState, period_s: float) -> TeleopCommand:
        return self.step(np.asarray(state.ee_pose), np.asarray(obj.cube_pose[:3]), period_s)

    def metrics(self) -> dict[str, float]:
        return {"active": float(self.active)}

    def waypoints(self, cube_xyz: np.ndarray) -> list[np.ndarray]:
        c = np.asarray(cube_xyz, float)
        above = c + np.array([0, 0, self.task.approach_height]) + self.offset
        return [above, c + np.array([0, 0, self.task.grasp_height])]

    def step(self, tcp_pose: np.ndarray, cube_xyz: np.ndarray, period_s: float) -> TeleopCommand:
        """The command for one teleop period from the measured TCP pose (7,) and the cube centre (3,)."""
        tcp = np.asarray(tcp_pose, float)
        if self.carrot is None:
            self.carrot = tcp[:3].copy()
            self.orientation = tcp[3:] / np.linalg.norm(tcp[3:])
            self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
        goals = self.waypoints(cube_xyz)
        goal = goals[self.phase]
        d = goal - self.carrot
        dist = float(np.linalg.norm(d))
        step = self.speed * period_s
        if dist <= step:
            self.carrot = goal.copy()
            if self.phase + 1 < len(goals):
                self.phase += 1
        else:
            self.carrot = self.carrot + d / dist * step
        buttons = []
        at_goal = self.phase == len(goals) - 1 and np.linalg.norm(tcp[:3] - goals[-1]) < self.tol
        self.settled_s = self.settled_s + period_s if at_goal else 0.0
        if self.settled_s >= self.settle_s and not self.done:
            self.done = True
            buttons.append("episode_stop")
        return TeleopCommand(
            kind="ee_absolute", value=np.r_[self.carrot, self.orientation], gripper=1.0, buttons=buttons
        )


class PickExpert(_SimExpert):
    """Pick-and-place demonstrations: a carrot through a list of phases, each a goal with a gripper
    command, as :class:`ReachExpert` does for reach.

    Phases: above the cube (``approach_height``, with a random per-episode offset), down to the
    grasp height, close the gripper (wait ``close_s``), lift to ``carry_height``, over the target
    centre, down to ``place_height``, open (wait ``open_s``), up to ``carry_height`` again, then
    ``episode_stop`` once the TCP rested there ``settle_s``. The TCP orientation stays the episode's
    start orientation: the Robotiq 2F-85 closes square on the cube at any yaw of the randomized
    +-45 deg (its pads turn the cube). Until the grasp the cube goals follow the cube's ground truth
    (``sim/objects``); after it they stay put. A descent waits for the TCP (within ``tol``, at most
    ``wait_s``) before the gripper moves.

    Recovery: when the lift ends with the cube still on the table (its centre below
    ``lifted_z``), the grasp missed; the expert opens and starts again from the approach, following
    the cube where it now lies (at most ``max_attempts`` attempts). So that demonstrations show this
    recovery, a fraction ``miss_rate`` of episodes aim their first grasp ``miss_offset`` beside the
    cube along the TCP x axis, the axis along the pads: the fingers close on air beside the cube
    without pushing it (measured in MuJoCo: 45 mm beside it the cube does not move; along the
    closing axis it is pushed 13-20 mm). A policy trained on them sees what a missed grasp looks
    like (the measured gripper width closes to zero, the wrist camera shows the cube below) and what
    follows it; this is a deliberate, recorded recovery, not noise added to the commands.

    Args:
        task: heights and the release width.
        speed: carrot speed, m/s. close_s, open_s: gripper waits, s.
        settle_s, tol: as for ReachExpert. wait_s: longest wait for the TCP at a descent goal, s.
        jitter: std (m) of the approach offset. seed: RNG seed.
        miss_rate: fraction of episodes whose first grasp is aimed beside the cube, 0..1.
        miss_offset: how far beside the cube that grasp is aimed, m.
        lifted_z: cube centre height (m, base frame) above which a lift counts as a grasp.
        max_attempts: grasp attempts; after the last it finishes the motions and presses stop, and the
            task's check reports the failure.
    """

    def __init__(
        self,
        task: PickTask = PickTask(),
        speed: float = 0.15,
        close_s: float = 0.7,
        open_s: float = 0.5,
        settle_s: float = 0.3,
        tol: float = 0.006,
        wait_s: float = 1.5,
        jitter: float = 0.01,
        seed: int = 0,
        miss_rate: float = 0.0,
        miss_offset: float = 0.045,
        lifted_z: float = 0.05,
        max_attempts: int = 3,
    ):
        if not 0.0 <= miss_rate <= 1.0:
            raise ValueError(f"miss_rate must be in [0, 1], got {miss_rate}")
        self.task, self.speed, self.close_s, self.open_s = task, speed, close_s, open_s
        self.settle_s, self.tol, self.wait_s, self.jitter = settle_s, tol, wait_s, jitter
        self.miss_rate, self.miss_offset, self.lifted_z, self.max_attempts = (
            miss_rate,
            miss_offset,
            lifted_z,
            max_attempts,
        )
        self.rng = np.random.default_rng(seed)
        self.active = False
        self.reset()

    PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "open", "retreat")

    def reset(self) -> None:
        self.carrot: np.ndarray | None = None
        self.orientation: np.ndarray | None = None
        self.offset = np.zeros(3)
        self.phase = 0
        self.t_phase = 0.0  # time the carrot has been at this phase's goal, s
        self.settled_s = 0.0
        self.grasp_xyz: np.ndarray | None = None
        self.done = False
        self.attempt = 0
        self.miss = np.zeros(3)  # this attempt's deliberate grasp offset, m (base frame)

    def command(self, state: RobotState, obj: ObjectState, period_s: float) -> TeleopCommand:
        return self.step(np.asarray(state.ee_pose), np.asarray(obj.cube_pose[:3]), np.asarray(obj.target_xy), period_s)

    def metrics(self) -> dict[str, float]:
        return {"active": float(self.active), "phase": float(self.phase), "attempt": float(self.attempt)}

    def goal(self, cube_xyz: np.ndarray, target_xy: np.ndarray) -> tuple[np.ndarray, float]:
        """This phase's TCP goal (3,) in the base frame and gripper command (1 open, 0 closed)."""
        t = self.task
        c = self.grasp_xyz if self.grasp_xyz is not None else np.asarray(cube_xyz, float) + self.miss
        tgt = np.r_[np.asarray(target_xy, float), 0.0]
        name = self.PHASES[self.phase]
        return {
            "approach": (c + np.r_[0, 0, t.approach_height] + self.offset, 1.0),
            "descend": (c + np.r_[0, 0, t.grasp_height], 1.0),
            "close": (c + np.r_[0, 0, t.grasp_height], 0.0),
            "lift": (np.r_[c[:2], t.carry_height], 0.0),
            "carry": (tgt + np.r_[0, 0, t.carry_height], 0.0),
            "lower": (tgt + np.r_[0, 0, t.place_height], 0.0),
            "open": (tgt + np.r_[0, 0, t.place_height], 1.0),
            "retreat": (tgt + np.r_[0, 0, t.carry_height], 1.0),
        }[name]

    def step(self, tcp_pose: np.ndarray, cube_xyz: np.ndarray, target_xy: np.ndarray, period_s: float) -> TeleopCommand:
        """The command for one teleop period from the measured TCP pose (7,), the cube centre (3,)
        and the target centre (2,), base frame."""
        tcp = np.asarray(tcp_pose, float)
        if self.carrot is None:
            self.carrot = tcp[:3].copy()
            self.orientation = tcp[3:] / np.linalg.norm(tcp[3:])
            self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
            if self.rng.random() < self.miss_rate:
                x = Rotation.from_quat(self.orientation).as_matrix()[:, 0]
                x = np.r_[x[:2], 0.0] / max(np.linalg.norm(x[:2]), 1e-9)
                self.miss = self.miss_offset * self.rng.choice([-1.0, 1.0]) * x
        goal, grip = self.goal(cube_xyz, target_xy)
        d = goal - self.carrot
        dist = float(np.linalg.norm(d))
        step = self.speed * period_s
        name = self.PHASES[self.phase]
        if dist <= step:
            self.carrot = goal.copy()
            self.t_phase += period_s
            arrived = np.linalg.norm(tcp[:3] - goal) < self.tol
            if name in ("close", "open"):
                advance = self.t_phase >= (self.close_s if name == "close" else self.open_s)
            elif name in ("descend", "lower"):
                advance = arrived or self.t_phase >= self.wait_s
            else:
                advance = True
            if name == "descend" and advance:
                self.grasp_xyz = goal - np.r_[0, 0, self.task.grasp_height]
            if name == "lift" and cube_xyz[2] < self.lifted_z and self.attempt + 1 < self.max_attempts:
                # missed: open on the way back up to the approach over where the cube now lies
                self.attempt += 1
                self.phase, self.t_phase, self.grasp_xyz, self.miss = 0, 0.0, None, np.zeros(3)
                self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
                advance = False
            if advance and self.phase + 1 < len(self.PHASES):
                self.phase += 1
                self.t_phase = 0.0
        else:
            self.carrot = self.carrot + d / dist * step
        buttons = []
        at_end = self.phase == len(self.PHASES) - 1 and np.linalg.norm(tcp[:3] - goal) < self.tol
        self.settled_s = self.settled_s + period_s if at_end else 0.0
        if self.settled_s >= self.settle_s and not self.done:
            self.done = True
            buttons.append("episode_stop")
        return TeleopCommand(
            kind="ee_absolute", value=np.r_[self.carrot, self.orientation], gripper=grip, buttons=buttons
        )


class PressExpert(_SimExpert):
    """Press demonstrations: force control from the wrist wrench (``RobotState.wrench``).

    Phases: gripper closed (the fingertips are the probe), a carrot to ``approach_height`` over the
    cube, down to ``touch_height`` over its centre, then ``press``: the carrot searches down at
    ``search_speed`` until the push on the tool exceeds ``contact_n``, then moves along z at
    ``gain`` x (Fz - force_n) (admittance: too hard, it backs off). After the force stayed within
    ``task.force_tol`` for ``task.hold_s`` plus ``extra_hold_s``, it retreats to the approach height
    and presses ``episode_stop``. The carrot's z is bounded to ``max_depth`` below the touch height.

    ``perturb_m``: every ``perturb_s`` in contact the carrot's z jumps by a uniform draw in
    +-``perturb_m`` and the admittance brings the force back; demonstrations then show how the
    command moves for a force away from its target (with a perfect hold they show nothing to learn
    a force reaction from: DART, Laskey et al. 2017, injects noise into the demonstrator for the
    same reason). The hold timer restarts after a jump.

    Args:
        task: the force target and heights. speed: carrot speed outside the press, m/s.
        gain: admittance gain, m/(N s). extra_hold_s: hold beyond the task's, s.
        tol: TCP distance that counts as arrived, m. seed: RNG seed (approach jitter, jumps).
        perturb_m, perturb_s: size (m) and period (s) of the jumps in contact; 0: none.
        max_perturbs: jumps per episode at most.
        max_depth: how far below the touch height the carrot may go, m.
    """

    PHASES = ("approach", "descend", "press", "retreat")

    def __init__(
        self,
        task: PressTask = PressTask(),
        speed: float = 0.15,
        gain: float = 0.004,
        extra_hold_s: float = 0.5,
        tol: float = 0.006,
        max_depth: float = 0.04,
        jitter: float = 0.01,
        seed: int = 0,
        perturb_m: float = 0.0,
        perturb_s: float = 0.5,
        max_perturbs: int = 4,
    ):
        self.perturb_m, self.perturb_s, self.max_perturbs = perturb_m, perturb_s, max_perturbs
        self.task, self.speed, self.gain, self.extra_hold_s = task, speed, gain, extra_hold_s
        self.tol, self.max_depth, self.jitter = tol, max_depth, jitter
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.carrot: np.ndarray | None = None
        self.orientation: np.ndarray | None = None
        self.phase = 0
        self.contact = False
        self.held_s = 0.0
        self.contact_s = 0.0
        self.perturbs = 0
        self.cube_xy: np.ndarray | None = None
        self.offset = np.zeros(3)
        self.done = False

    def command(self, state: RobotState, obj: ObjectState, period_s: float) -> TeleopCommand:
        return self.step(np.asarray(state.ee_pose), np.asarray(obj.cube_pose[:3]), PressTask.force_z(state), period_s)

    def metrics(self) -> dict[str, float]:
        return {"active": float(self.active), "phase": float(self.phase), "contact": float(self.contact)}

    def step(self, tcp_pose: np.ndarray, cube_xyz: np.ndarray, force_z: float, period_s: float) -> TeleopCommand:
        """The command for one period from the TCP pose (7,), the cube centre (3,) (base frame) and
        the measured push on the tool along +z (N; NaN: no wrench, the press does not advance)."""
        t, tcp = self.task, np.asarray(tcp_pose, float)
        if self.carrot is None:
            self.carrot = tcp[:3].copy()
            self.orientation = tcp[3:] / np.linalg.norm(tcp[3:])
            self.offset = np.r_[self.rng.normal(0, self.jitter, 2), 0.0]
        c = np.asarray(cube_xyz, float) if self.cube_xy is None else np.r_[self.cube_xy, cube_xyz[2]]
        name = self.PHASES[self.phase]
        buttons: list[str] = []
        if name == "press":
            z_touch = c[2] + t.touch_height
            if not np.isfinite(force_z):
                pass
            elif not self.contact:
                self.contact = force_z >= t.contact_n
                self.carrot[2] -= t.search_speed * period_s
            else:
                self.carrot[2] += self.gain * (force_z - t.force_n) * period_s
                self.contact_s += period_s
                if (
                    self.perturb_m > 0
                    and self.perturbs < self.max_perturbs
                    and self.contact_s >= (self.perturbs + 1) * self.perturb_s
                ):
                    self.carrot[2] += self.rng.uniform(-self.perturb_m, self.perturb_m)
                    self.perturbs += 1
                    self.held_s = -period_s  # the hold starts again
            self.carrot[2] = float(np.clip(self.carrot[2], z_touch - self.max_depth, z_touch))
            ok = self.contact and abs(force_z - t.force_n) <= t.force_tol * t.force_n
            self.held_s = self.held_s + period_s if ok else 0.0
            if self.held_s >= t.hold_s + self.extra_hold_s:
                self.phase += 1
        else:
            goal = {
                "approach": c + np.r_[0, 0, t.approach_height] + self.offset,
                "descend": c + np.r_[0, 0, t.touch_height],
                "retreat": c + np.r_[0, 0, t.approach_height],
            }[name]
            d = goal - self.carrot
            dist, step = float(np.linalg.norm(d)), self.speed * period_s
            if dist <= step:
                self.carrot = goal.copy()
                arrived = np.linalg.norm(tcp[:3] - goal) < self.tol
                if name == "descend" and arrived:
                    self.cube_xy = c[:2].copy()  # from here on the press holds this xy
                    self.phase += 1
                elif name == "approach":
                    self.phase += 1
                elif name == "retreat" and arrived and not self.done:
                    self.done = True
                    buttons.append("episode_stop")
            else:
                self.carrot = self.carrot + d / dist * step
        return TeleopCommand(
            kind="ee_absolute", value=np.r_[self.carrot, self.orientation], gripper=0.0, buttons=buttons
        )


class LiftExpert(TeleopDevice):
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

    def poll(self, inputs: TeleopInputs) -> list[TeleopCommand] | None:
        if not self.active:
            return None
        obj = inputs.latest(ObjectState.TOPIC)
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
            if dist <= speed * period_s:
                self.carrot[a] = goals[a].copy()
            else:
                self.carrot[a] = self.carrot[a] + d / dist * speed * period_s
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


class ScriptedConfig(TeleopConfig):
    """teleop device ``scripted``: a sim task's expert (reads the sim's ground truth)."""

    type: Literal["scripted"] = "scripted"
    task: Literal["reach", "pick", "press", "lift"] = Field(
        "reach", description="the task it demonstrates (the sim world's task); lift drives the teleop node's two arms"
    )
    speed: float = Field(0.15, gt=0, description="TCP speed, m/s")
    seed: int = Field(0, description="seed of the expert's randomness (approach jitter, deliberate misses)")
    perturb_m: float = Field(
        0.0,
        ge=0,
        le=0.02,
        description="press: jumps of the command (m) in contact, so that "
        "demonstrations show the force reaction (DART-style)",
    )
    miss_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="pick: fraction of episodes whose first grasp is aimed "
        "beside the cube, so that demonstrations show the recovery from a missed grasp",
    )
    world: str = Field("sim", description="node name of the sim world (its object ground truth)")

    def inputs(self, params) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {
            **{a: ("arm", (RobotState.TOPIC,)) for a in params.arm_nodes},
            self.world: ("sim_world", (ObjectState.TOPIC,)),
        }

    def build(self, ctx, params) -> ReachExpert | PickExpert | PressExpert | LiftExpert:
        if self.task == "lift":
            return LiftExpert(self.arm_bases(ctx.config, params.arm_nodes), speed=self.speed, seed=self.seed)
        if self.task == "press":
            return PressExpert(speed=self.speed, seed=self.seed, perturb_m=self.perturb_m)
        if self.task == "pick":
            return PickExpert(speed=self.speed, seed=self.seed, miss_rate=self.miss_rate)
        return ReachExpert(speed=self.speed, seed=self.seed)

    def arm_bases(self, cfg, arm_nodes: list[str]) -> dict[str, np.ndarray]:
        """Arm node -> (4, 4) pose of its base in the world frame, from the sim world's placement of
        the arm its sim driver names (privileged, like the object ground truth).

        Raises:
            ValueError: the world or an arm's sim driver is missing, or the world has no such arm.
        """
        if self.world not in cfg.nodes or cfg.nodes[self.world].kind != "sim_world":
            raise ValueError(f"teleop scripted lift: no sim world node {self.world!r}")
        world = cfg.nodes[self.world].typed
        out = {}
        for node in arm_nodes:
            name = getattr(cfg.nodes[node].typed.driver, "arm", None) if node in cfg.nodes else None
            if name not in world.arms:
                raise ValueError(
                    f"teleop scripted lift: arm node {node!r} drives no arm of the sim world "
                    f"(its arms: {sorted(world.arms)})"
                )
            out[node] = world.arms[name].T_world_base()
        return out
