"""A controller's link to its arms: one schedule, heartbeat, hold or e-stop to every arm node."""

from __future__ import annotations

import logging

import numpy as np

from robot_stack.comm.messages import WaypointSchedule
from robot_stack.comm.transport import TransportTimeout

log = logging.getLogger(__name__)


class ArmFanout:
    """Sends to the arm nodes a controller drives, in action order, and publishes what it sent.

    Every send that cannot reach its arm (:class:`~robot_stack.comm.transport.TransportTimeout`) is
    counted in :attr:`errors` and logged; the other arms still get theirs.

    Args:
        clients: arm node name -> :class:`~robot_stack.runtime.arm_client.ArmClient`, in action order.
        pub: the node's publisher (``controller/action``: the executed schedules, for the recorder).
    """

    def __init__(self, clients: dict, pub):
        self.clients, self.pub = clients, pub
        self.arms = list(clients)
        self.multi = len(self.arms) > 1
        self.errors = 0

    def _each(self, what: str, fn) -> None:
        for name, client in self.clients.items():
            try:
                fn(client)
            except TransportTimeout as e:
                self.errors += 1
                log.error("%s could not reach arm %s: %s", what, name, e)

    def heartbeat(self) -> None:
        self._each("heartbeat", lambda c: c.heartbeat())

    def hold(self) -> None:
        self._each("hold", lambda c: c.hold())

    def estop(self, reason: str) -> None:
        log.warning("e-stop to every arm: %s", reason)
        self._each("e-stop", lambda c: c.estop(reason))

    def send(self, stamps: np.ndarray, actions: np.ndarray, origin: str) -> None:
        """(k, 8 per arm) [x y z qx qy qz qw gripper] actions, every arm on the same stamps (lockstep)."""
        for i, arm in enumerate(self.arms):
            a = actions[:, 8 * i : 8 * i + 8]
            self.dispatch(arm, stamps, a[:, :7], "ee", np.clip(a[:, 7], 0, 1), origin)

    def dispatch(self, arm: str, stamps, positions, space: str, gripper, origin: str) -> None:
        """One schedule to one arm (quaternions normalized), published on ``controller/action``."""
        positions = np.array(positions, np.float64)
        if space == "ee":
            positions[:, 3:] /= np.linalg.norm(positions[:, 3:], axis=1, keepdims=True)
        msg = WaypointSchedule(
            stamps_ns=np.asarray(stamps, np.int64),
            positions=positions,
            space=space,
            gripper=gripper,
            origin=origin,
            arm=arm if self.multi else "",
        )
        try:
            self.clients[arm].send_schedule(msg.stamps_ns, positions, space=space, gripper=gripper, origin=origin)
            self.pub.publish(WaypointSchedule.EXECUTED_TOPIC, msg)
        except TransportTimeout as e:
            self.errors += 1
            log.error("arm %s not reachable: %s", arm, e)
