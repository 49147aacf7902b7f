"""The press task (``press``, the contact task) and its scripted expert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from robot_stack.comm.messages import RobotState, TeleopCommand
from robot_stack.tasks.base import Expert
from robot_stack.tasks.reach import ReachTask


@dataclass(frozen=True)
class PressTask(ReachTask):
    """Press the cube down with a set force: a contact task for slow-fast control (RDP,
    arXiv 2503.02881, measures reactive policies on such tasks).

    The cube lies at a random position (in ``cube_range``, 6 cm square) and yaw, and its contact softness is random
    each episode (``SimWorld.randomize_cube_softness``): the depth a given force needs differs by
    episode and cannot be seen, only felt with the wrist force/torque (``RobotState.wrench``).
    Success (base frame): the TCP is within ``xy_tol`` of the cube centre horizontally, the
    measured push on the tool along +z is within ``force_tol`` (fraction) of ``force_n``, the cube
    moved less than ``push_tol``, and all of it holds ``hold_s``. ``error_mm`` is the force error
    in N (``error_unit``).

    Expert: closes the gripper (the fingertips are the probe), goes ``approach_height`` over the
    cube, down to ``touch_height`` above its centre (just short of the top), then searches down
    at ``search_speed`` until it feels ``contact_n`` and regulates the force (admittance).
    """

    #: the cube's x and y ranges in the sim, m (narrower than reach's: the task is the force, not
    #: finding the cube)
    cube_range = ((0.47, 0.53), (-0.05, 0.01))
    force_n: float = 8.0
    force_tol: float = 0.25
    hold_s: float = 1.0
    push_tol: float = 0.03
    approach_height: float = 0.10
    touch_height: float = 0.045  # TCP over the cube centre where the search starts (touch at ~37 mm), m
    contact_n: float = 0.5
    search_speed: float = 0.01  # m/s

    error_name = "|Fz - F*|"
    error_unit = "N"

    def near_goal(self, error: float) -> bool:
        """Within twice the force tolerance (``error_mm`` is the force error, N)."""
        return error <= 2 * self.force_tol * self.force_n

    name = "press"
    text = "press the cube down with 8 N (its softness is random each episode, felt only through the wrist force)"
    #: no demo: bench/slowfast.py runs it (configs/sim_panda_press.yaml), with the slow-fast policy
    setup: ClassVar[str | None] = None

    def on_reset(self, world) -> str | None:
        """The cube's contact softness, random each episode (``SimWorld.randomize_cube_softness``)."""
        return f"cube contact time constant {world.randomize_cube_softness():.3f} s"

    def expert(self, device, bases: dict | None = None) -> Expert:
        return PressExpert(self, speed=device.speed, seed=device.seed, perturb_m=device.perturb_m)

    @staticmethod
    def force_z(state) -> float:
        """Measured push on the tool along base +z, N (NaN without a wrench)."""
        w = getattr(state, "wrench", None)
        return float(w[2]) if w is not None else float("nan")

    def achieved(self, state, obj, cube_start_xyz: np.ndarray) -> bool:
        tcp, cube = np.asarray(state.ee_pose[:3], float), np.asarray(obj.cube_pose[:3], float)
        moved = np.linalg.norm(cube[:2] - np.asarray(cube_start_xyz, float)[:2])
        f = self.force_z(state)
        return bool(
            self.xy_error(tcp, cube) <= self.xy_tol
            and abs(f - self.force_n) <= self.force_tol * self.force_n
            and moved <= self.push_tol
        )

    def error_mm(self, state, obj) -> float:
        """Force error |Fz - force_n|, N (the unit is ``error_unit``)."""
        return abs(self.force_z(state) - self.force_n)


class PressExpert(Expert):
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

    def command(self, state: RobotState, obj, period_s: float) -> TeleopCommand:
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
