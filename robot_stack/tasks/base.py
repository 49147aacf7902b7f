"""What every sim task shares: the scripted expert's base (:class:`Expert`) and the topic of the
sim's object ground truth. Pure: imports the message layer only (the task layer sits beside
``control``, below drivers, teleop and nodes, which all read the tasks)."""

from __future__ import annotations

import numpy as np

from robot_stack.comm.messages import RobotState, TeleopCommand

#: the sim world's object ground truth (``robot_stack.drivers.sim_messages.ObjectState.TOPIC``,
#: named here because the task layer sits below the drivers; tests/test_tasks.py checks they agree)
OBJECTS_TOPIC = "sim/objects"


#: how far an expert's carrot may lead the measured TCP, m. Beyond it the carrot waits for the arm
#: (pure pursuit with a bounded look-ahead): an arm held by a driver fault, a stop or a slow-down is
#: never left further behind than the arm node's jump limit (``max_jump_ee``, 8 cm by default), whose
#: refusals would otherwise keep it held for the rest of the episode (seen under CPU load)
MAX_LEAD_M = 0.04


def carrot_step(carrot: np.ndarray, tcp_xyz: np.ndarray, step_m: float, max_lead_m: float = MAX_LEAD_M) -> float:
    """How far (m) a carrot at ``carrot`` (3,) may advance this period: ``step_m``, or 0 while it
    leads the measured TCP ``tcp_xyz`` (3,), same frame, by ``max_lead_m`` or more."""
    return step_m if float(np.linalg.norm(np.asarray(carrot) - np.asarray(tcp_xyz))) < max_lead_m else 0.0


class Expert:
    """A task's scripted expert as a teleop device: it acts between an episode's start and its stop
    (the recorder's episode events reach the teleop node), each period from the measured TCP
    (``robot/state``) and the sim's object ground truth (``sim/objects``) through :meth:`command`,
    and ends its demonstration by pressing ``episode_stop`` once, as a person would.

    It has the teleop device interface (``poll``, ``on_episode``, ``metrics``, ``close``;
    ``robot_stack.teleop.base.TeleopDevice``) without importing the teleop layer; a one-arm
    expert overrides :meth:`command`, a several-arm expert overrides :meth:`poll`.
    """

    active = False

    def reset(self) -> None:
        """Forget the episode."""

    def on_episode(self, kind: str) -> None:
        self.active = kind == "start"
        self.reset()

    def metrics(self) -> dict[str, float]:
        """Counters for the teleop node's heartbeat."""
        return {"active": float(self.active)}

    def close(self) -> None:
        """Nothing to release."""

    def poll(self, inputs) -> TeleopCommand | list[TeleopCommand] | None:
        """One period's command while an episode runs and both the TCP and the objects are known
        (``inputs``: the teleop node's ``TeleopInputs``)."""
        if not self.active:
            return None
        st, obj = inputs.latest(RobotState.TOPIC), inputs.latest(OBJECTS_TOPIC)
        if st is None or obj is None:
            return None
        return self.command(st, obj, inputs.period_s)

    def command(self, state: RobotState, obj, period_s: float) -> TeleopCommand:
        """The command from the measured robot state and the sim's object state (``ObjectState``:
        ``cube_pose`` (7,), ``target_xy`` (2,), ``target_half``), one period of ``period_s`` s."""
        raise NotImplementedError
