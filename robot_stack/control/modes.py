"""Who drives the arms: the controller's mode machine, a pure core fed by events.

Modes:

- ``idle``: between episodes (execution off: an episode ``stop``/``reset``/``discard``, or no
  ``autostart``); nothing is sent but replay schedules already running;
- ``policy``: the policy's chunks drive;
- ``teleop``: a teleop device drives (from the setup's ``source: teleop``, or an intervention);
- ``external``: only schedules sent to the controller's input drive (``robot-stack replay``);
- ``held``: an arm is in e-stop and ``hold_together`` holds every arm until it is released.

Every change that invalidates the plan (an episode event, an intervention, a hand-back, a hold) bumps
:attr:`ModeMachine.generation`: a chunk whose request left under an older generation was observed
in another episode or before the change, and is dropped on arrival. The intervention rules: an
``intervene`` button hands the arm to teleop (one-arm setups only: with several arms, who takes
which arm is not defined, so it is refused and counted); ``release`` hands back to the policy when
the setup has one.
"""

from __future__ import annotations

import logging
from typing import Literal
from collections.abc import Iterable

log = logging.getLogger(__name__)

Source = Literal["policy", "teleop", "external"]


class ModeMachine:
    """The controller's mode (see the module docstring).

    Args:
        source: who drives when an episode runs: ``policy``, ``teleop`` or ``external``.
        autostart: execution on from the start (else from the first episode ``start``).
        has_policy: the setup has a policy (a hand-back from teleop needs one).
        n_arms: arms driven in lockstep.
        hold_together: with several arms, an arm in e-stop holds every arm.
    """

    def __init__(self, source: Source, autostart: bool, has_policy: bool, n_arms: int = 1, hold_together: bool = True):
        self.source: Source = source
        self.enabled = bool(autostart)
        self.has_policy = has_policy
        self.n_arms = n_arms
        self.hold_together = hold_together
        self.generation = 0
        self.estopped: list[str] = []
        self.interventions = 0
        self.refused_interventions = 0
        self.episodes = 0

    # ----------------------------------------------------------------------------- queries
    @property
    def mode(self) -> str:
        """idle, policy, teleop, external or held."""
        if self.held:
            return "held"
        return self.source if self.enabled else "idle"

    @property
    def held(self) -> bool:
        """Several arms with ``hold_together``, and one of them in e-stop."""
        return bool(self.estopped)

    @property
    def policy_driving(self) -> bool:
        """The policy's chunks are to be requested, planned and sent."""
        return self.enabled and self.source == "policy" and not self.held

    @property
    def teleop_driving(self) -> bool:
        """Teleop motion commands are to be executed."""
        return self.enabled and self.source == "teleop"

    def is_current(self, generation: int) -> bool:
        """A chunk requested under ``generation`` may still be executed."""
        return generation == self.generation and self.policy_driving

    # ----------------------------------------------------------------------------- events
    def clear(self) -> None:
        """The plan is dropped (:meth:`drop_plan`)."""
        self.drop_plan()

    def drop_plan(self) -> int:
        """The plan is dropped (chunks in flight become stale); returns the new generation."""
        self.generation += 1
        return self.generation

    def episode(self, kind: str) -> bool:
        """An episode event (``start``, ``stop``, ``reset``, ``discard``); True when it changed
        something (the plan is then dropped).

        Raises:
            ValueError: an unknown kind.
        """
        if kind == "start":
            self.enabled = True
            self.episodes += 1
        elif kind in ("stop", "reset", "discard"):
            self.enabled = False
        else:
            raise ValueError(f"unknown episode event {kind!r}")
        self.drop_plan()
        return True

    def intervene(self) -> bool:
        """The teleop ``intervene`` button: teleop takes over (True), or nothing changes."""
        if self.source == "teleop":
            return False
        if self.n_arms > 1:
            self.refused_interventions += 1
            log.warning("intervention refused: with %d arms, which arm teleop takes is not defined", self.n_arms)
            return False
        self.source = "teleop"
        self.interventions += 1
        self.drop_plan()
        log.info("intervention: teleop takes over")
        return True

    def release(self) -> bool:
        """The teleop ``release`` button: back to the policy (True) when teleop drives and the setup
        has a policy."""
        if self.source != "teleop" or not self.has_policy:
            return False
        self.source = "policy"
        self.drop_plan()
        log.info("teleop hands back to the policy")
        return True

    def arms_in_estop(self, arms: Iterable[str]) -> bool:
        """The arms whose state says e-stop, this control step; True when the set changed. With
        several arms and ``hold_together``, any of them holds every arm (the plan is dropped when
        the hold begins)."""
        now = sorted(arms) if (self.n_arms > 1 and self.hold_together) else []
        if now == self.estopped:
            return False
        if now and not self.estopped:
            self.drop_plan()
        self.estopped = now
        return True

    def buttons(self, pressed: list[list[str]]) -> tuple[bool, bool]:
        """The buttons of this step's teleop commands, oldest first: ``(estop, replan)``: an
        e-stop was pressed (every arm must stop), the plan must be dropped (an intervention or a
        hand-back took effect)."""
        estop = replan = False
        for b in pressed:
            estop |= "estop" in b
            if ("intervene" in b and self.intervene()) or ("release" in b and self.release()):
                replan = True
        return estop, replan

    def metrics(self) -> dict[str, float]:
        """``interventions``, ``refused_interventions``, ``episodes``."""
        return {
            "interventions": float(self.interventions),
            "refused_interventions": float(self.refused_interventions),
            "episodes": float(self.episodes),
        }
