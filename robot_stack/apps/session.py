"""A running stack for the episode jobs (collect, replay, deploy, demo).

:class:`Session` starts a config's nodes (with parameter overrides written to an effective config
in the run folder), subscribes to what the jobs watch, and sends episode events, resets and arm
moves. Between episodes the arm goes home through its safety layer (a joint-space schedule at a
gentle speed); on the sim backend the sim world then places the cube (randomly, or at a recorded
pose). On hardware the operator resets the scene; :meth:`reset` waits for a key.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from robot_stack.runtime.arm_client import ArmClient
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.config import load_config
from robot_stack.runtime.launcher import Launcher
from robot_stack.comm.messages import CameraFrame, EpisodeEvent, Heartbeat, RobotState
from robot_stack.drivers.sim_messages import SimCommand
from robot_stack.comm.transport import Sender, Subscriber
from robot_stack.drivers.sim_messages import ObjectState

log = logging.getLogger(__name__)

HOME_SPEED = 0.6  # rad/s of the largest joint motion when going home


class SessionError(RobotStackError, RuntimeError):
    """A job's stack failed (a node died, the stack did not come up, the sim did not reset).

    ``summary`` is one line for the user (what the CLI prints); ``log_tail`` holds the nodes' last
    log lines (the CLI prints them with ``--debug``); ``str(e)`` is both, for logs and tests."""

    def __init__(self, summary: str, log_tail: str = ""):
        super().__init__(summary + (f"\n{log_tail}" if log_tail else ""))
        self.summary = summary
        self.log_tail = log_tail


class LogSink:
    """Keeps node log lines (for an error report) instead of flooding a status display."""

    def __init__(self, keep: int = 2000, echo: bool = False):
        self.lines: list[str] = []
        self.keep, self.echo = keep, echo

    def write(self, s: str) -> None:
        if self.echo:
            print(s, end="", flush=True)
        self.lines.extend(s.splitlines())
        del self.lines[: -self.keep]

    def flush(self) -> None:
        pass

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


def write_overridden(config_path: str | Path, sets: dict | list[str] | None, folder: Path) -> Path:
    """The setup at ``config_path`` written flat into ``folder`` with ``sets`` applied
    (:func:`robot_stack.runtime.config.write_resolved`); returns the written path."""
    from robot_stack.runtime.config import write_resolved

    return write_resolved(config_path, sets, folder)


def episode_task_text(cfg, task) -> str:
    """An episode's task text (the recorder keeps it; the controller sends it as the policy's
    prompt): the setup's recorder ``task`` where set (``--set nodes.recorder.params.task=...``),
    else the task definition's ``text``."""
    set_ = next((nc.typed.task for nc in cfg.nodes.values() if nc.kind == "recorder" and nc.typed.task), "")
    return set_ or getattr(task, "text", "")


def viewer_sets(cfg, view: str | None, cameras: list[str] | None = None) -> dict:
    """Config overrides adding a live-view node: ``view`` is "spawn" (rerun window), a rerun URL
    (connect to a viewer elsewhere) or a ``.rrd`` path (save for later); None adds nothing."""
    if not view:
        return {}
    arm = [n for n, nc in cfg.nodes.items() if nc.kind == "arm"]
    cams = cameras if cameras is not None else [n for n, nc in cfg.nodes.items() if nc.kind == "camera"]
    params: dict = {"watch": arm + cams}
    if view == "spawn":
        params["spawn"] = True
    elif "://" in view:
        params["connect"] = view
    else:
        params["rrd_path"] = str(Path(view).resolve())
    return {"nodes.viewer": {"kind": "viewer", "critical": False, "params": params}}


class Session:
    """Launch and drive a stack.

    Args:
        config_path: the setup YAML.
        sets: dotted-key overrides of the config.
        only: nodes to start (default all).
        verbose: stream node logs to stdout (else kept in ``self.logs``).
    """

    def __init__(
        self, config_path: str | Path, sets: dict | None = None, only: list[str] | None = None, verbose: bool = False
    ):
        self.tmp = Path(tempfile.mkdtemp(prefix="rs-session-"))
        self.config_path = write_overridden(config_path, sets, self.tmp)
        load_config(self.config_path)  # validation errors name the key before anything starts
        self.logs = LogSink(echo=verbose)
        self.launcher = Launcher(self.config_path, only=only, out=self.logs)
        self.cfg, self.rd = self.launcher.config, self.launcher.run_dir
        self.nodes = only or list(self.cfg.nodes)
        self.sim = next((n for n in self.nodes if self.cfg.nodes[n].kind == "sim_world"), None)
        #: the arm nodes (several in a bimanual setup); ``arm_name`` / ``arm``: the first
        self.arm_names = [n for n in self.nodes if self.cfg.nodes[n].kind == "arm"]
        self.arm_name = self.arm_names[0] if self.arm_names else None
        self.arms: dict[str, ArmClient] = {}
        self.reset_retries = 0  # reset moves sent again (refused by the arm node, or not arrived)
        self.sub: Subscriber | None = None
        self.arm: ArmClient | None = None
        self._senders: dict[str, Sender] = {}
        self._sup: threading.Thread | None = None

    def start(self, wait_topics: tuple[str, ...] = (RobotState.TOPIC,), timeout_s: float = 120) -> None:
        """Start the nodes and wait until ``wait_topics`` arrive.

        Raises:
            RuntimeError: the stack did not come up (with the last node log lines).
        """
        self.launcher.start()
        self._sup = threading.Thread(target=self.launcher.supervise, daemon=True)
        self._sup.start()
        pubs = [self.cfg.pub_endpoint(n, self.rd) for n in self.nodes if self.cfg.nodes[n].kind != "monitor"]
        # no camera frames here: 4000 of them per camera held 1.2 GB and more in a collect, and their
        # decoding kept this reader behind its robot states; start-up checks them on their own
        self.sub = Subscriber(
            pubs,
            (RobotState.TOPIC, Heartbeat.TOPIC, ObjectState.TOPIC, "teleop/", "controller/"),
            history=4000,
            name="session",
        )
        frames = [t for t in wait_topics if t.startswith(CameraFrame.TOPIC)]
        cams = Subscriber(pubs, frames, history=1, name="session-cameras") if frames else None
        try:
            for t in wait_topics:
                if (cams if t in frames else self.sub).wait_for(t, timeout_s) is None:
                    raise SessionError(f"the stack did not come up ({t} never arrived)", self.logs.tail())
        finally:
            if cams is not None:
                cams.close()
        deadline = time.monotonic() + timeout_s
        for n in self.arm_names:
            self.arms[n] = ArmClient(self.cfg, self.rd, arm=n, source="session")
            while len(self.arm_names) > 1 and self.state(n) is None:  # every arm's state, not just the first's
                if time.monotonic() > deadline:
                    raise SessionError(f"the stack did not come up (no robot state from {n})", self.logs.tail())
                time.sleep(0.05)
        self.arm = self.arms.get(self.arm_name)

    def raise_if_dead(self) -> None:
        """Raises SessionError naming the nodes that died (exit code or signal) and why, if any did."""
        d = self.dead()
        if d:
            from robot_stack.runtime.launcher import describe_exit

            why = "; ".join(f"{n} {describe_exit(c)}" for n, c in d.items())
            raise SessionError(f"node died: {why}", self.logs.tail())

    def dead(self) -> dict[str, int]:
        return dict(self.launcher.dead)

    def send_event(self, kind: str, nodes: list[str], episode: int = 0, task: str = "") -> None:
        """Send an episode event to each of ``nodes`` (lossless channel)."""
        for n in nodes:
            if n not in self._senders:
                self._senders[n] = Sender(self.cfg.in_endpoint(n, self.rd), "session", timeout_s=2.0)
            self._senders[n].send(EpisodeEvent.TOPIC, EpisodeEvent(kind=kind, episode=episode, task=task))

    def state(self, arm: str | None = None):
        """The newest RobotState of ``arm`` (default the first arm node), or None."""
        if len(self.arm_names) <= 1:
            return self.sub.latest(RobotState.TOPIC)
        arm = arm or self.arm_name
        return next((m for m in reversed(self.sub.history(RobotState.TOPIC)) if m.source == arm), None)

    def fresh_state(self, arm: str | None = None, not_before_ns: int | None = None, timeout_s: float = 10.0):
        """The newest RobotState of ``arm`` (default the first arm node) once one stamped at or after
        ``not_before_ns`` (default: 20 ms ago) has arrived. :meth:`state` can be seconds old when
        this process's reader falls behind a 500 Hz state stream on a loaded machine; a move planned
        from, or checked against, such a state goes wrong.

        Raises:
            SessionError: none arrived within ``timeout_s``.
        """
        after = now_ns() - 20_000_000 if not_before_ns is None else int(not_before_ns)
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.state(arm)
            if st is not None and st.stamp_ns >= after:
                return st
            if time.monotonic() > deadline:
                age = "none" if st is None else f"the newest is {(after - st.stamp_ns) / 1e6:.0f} ms too old"
                raise SessionError(
                    f"no fresh robot state from {arm or self.arm_name} within {timeout_s:g} s ({age})", self.logs.tail()
                )
            time.sleep(0.005)

    def heartbeat(self, node: str) -> dict[str, float]:
        hb = self.sub.latest(Heartbeat.topic(node))
        return dict(hb.metrics) if hb is not None else {}

    #: a reset move has arrived when the arm is this close to its goal (rad per joint; m for the TCP)
    REACH_TOL_RAD = 0.05
    REACH_TOL_M = 0.005

    def _move_until_there(self, send, error, tol: float, what: str, attempts: int, settle_s: float, arm: str) -> None:
        """Send a move (``send()`` -> the schedule's stamps), wait for its end plus ``settle_s``, and
        check ``error(state)`` < ``tol`` on a robot state of ``arm`` stamped after that (not on an
        older one still queued in this process); a move that did not arrive (the arm node refused
        it: its log and ``safety.*`` counters say why, e.g. a jump against a plan still running when
        the move went out) is sent again from where the arm is, up to ``attempts`` moves in all.

        Raises:
            SessionError: not there after ``attempts`` moves, or no fresh robot state.
        """
        for _ in range(attempts):
            stamps = send()
            done_ns = int(stamps[-1]) + int(settle_s * 1e9)
            time.sleep(max(0.0, (done_ns - now_ns()) / 1e9))
            err = error(self.fresh_state(arm, not_before_ns=done_ns))
            if err < tol:
                return
            self.reset_retries += 1
            log.warning("the %s is %.4g from the move's goal (the arm node refused it?): sending it again", what, err)
        raise SessionError(
            f"the {what} did not reach its goal in {attempts} moves ({err:.4g} away); "
            "the arm node's log says why it refused them",
            self.logs.tail(),
        )

    def move_joints(
        self,
        q_goal: np.ndarray,
        speed: float = HOME_SPEED,
        settle_s: float = 0.4,
        attempts: int = 3,
        arm: str | None = None,
    ) -> None:
        """Joint-space move to ``q_goal`` (rad) through the arm node ``arm`` (default the first),
        planned from a fresh robot state; blocks until the arm is there (within ``REACH_TOL_RAD``),
        sending a refused move again (:meth:`_move_until_there`).

        Raises:
            SessionError: the arm is not at the goal after ``attempts`` moves.
        """
        q_goal = np.asarray(q_goal, float)
        arm = arm or self.arm_name

        def send():
            q0 = np.asarray(self.fresh_state(arm).q, float)
            dur = max(0.5, float(np.max(np.abs(q_goal - q0))) / speed)
            n = max(2, int(dur / 0.05))
            s = np.linspace(0, 1, n)[1:]
            s = 0.5 - 0.5 * np.cos(np.pi * s)  # smooth start and stop
            stamps = now_ns() + 100_000_000 + (np.linspace(0, dur, n)[1:] * 1e9).astype(np.int64)
            self.arms[arm].send_schedule(stamps, q0 + s[:, None] * (q_goal - q0), space="joint", gripper=np.ones(n - 1))
            return stamps

        self._move_until_there(
            send,
            lambda st: float(np.max(np.abs(np.asarray(st.q, float) - q_goal))),
            self.REACH_TOL_RAD,
            f"{arm} (rad)",
            attempts,
            settle_s,
            arm,
        )

    def move_pose(
        self, pose: np.ndarray, speed: float = 0.15, settle_s: float = 0.4, attempts: int = 3, arm: str | None = None
    ) -> None:
        """Straight-line TCP move of ``arm`` (default the first) to ``pose`` (7,) in its base frame,
        planned from a fresh robot state; blocks until the TCP is there (within ``REACH_TOL_M``),
        sending a refused move again (:meth:`_move_until_there`).

        Raises:
            SessionError: the TCP is not at the goal after ``attempts`` moves.
        """
        from robot_stack.control.paths import straight_line

        pose = np.asarray(pose, float)
        arm = arm or self.arm_name

        def send():
            stamps, poses = straight_line(np.asarray(self.fresh_state(arm).ee_pose), pose, now_ns(), speed)
            self.arms[arm].send_schedule(stamps, poses, space="ee")
            return stamps

        self._move_until_there(
            send,
            lambda st: float(np.linalg.norm(np.asarray(st.ee_pose[:3], float) - pose[:3])),
            self.REACH_TOL_M,
            "TCP (m)",
            attempts,
            settle_s,
            arm,
        )

    def home_pose(self, arm: str | None = None) -> np.ndarray:
        """(7,) the arm's TCP pose at its home posture [x y z qx qy qz qw] (m, base frame): the
        forward kinematics of its robot model's ``home_q``, where :meth:`reset` sends it."""
        from robot_stack.control.robot_model import RobotModel

        arm = arm or self.arm_name
        cache = self.__dict__.setdefault("_home_poses", {})  # one model compile per arm, not per episode
        if arm not in cache:
            model = RobotModel.load(self.cfg.nodes[arm].typed.robot_name(self.cfg))
            cache[arm] = np.asarray(model.fk(model.home_q), float)
        return cache[arm].copy()

    #: a TCP lower than this over the base (m) is first lifted straight up to it before the joint
    #: move home: from a low pose (a pick ends with the hand at the table) the joint-space path
    #: to home can sweep the fingers into the table, which the arm's collision guard stops
    RESET_LIFT_Z = 0.12

    def _lift_if_low(self, arm: str) -> None:
        st = self.fresh_state(arm)
        pose = np.asarray(st.ee_pose, float)
        if pose[2] >= self.RESET_LIFT_Z:
            return
        try:
            self.move_pose(np.r_[pose[:2], self.RESET_LIFT_Z, pose[3:]], arm=arm, attempts=2)
        except SessionError as e:  # the joint move home still goes (and names its own refusal)
            log.warning("reset: could not lift %s's TCP before going home: %s", arm, e)

    def reset(
        self,
        cube_pose: np.ndarray | None = None,
        home_q: np.ndarray | None = None,
        start_pose: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Reset period: arm home; sim: cube placed (random when None) and its pose returned;
        hardware: waits for the operator (Enter) and returns None. Then, if ``start_pose`` (7,)
        is given, a straight TCP move there (the episode's start). Several arms: each goes to its
        own home posture (``home_q`` is the first arm's), one after the other; the grippers open."""
        from robot_stack.control.robot_model import load_description

        for arm in self.arm_names:  # each arm's own home posture, from its robot model
            self._lift_if_low(arm)
            q = home_q if home_q is not None and arm == self.arm_name else None
            if q is None:
                q = np.asarray(load_description(self.cfg.nodes[arm].typed.robot_name(self.cfg))[0].home_q)
            self.move_joints(q, arm=arm)
        if self.sim is None:
            input("reset the scene, then press Enter to start the next episode ")
            if start_pose is not None:
                self.move_pose(start_pose)
            return None
        if "sim" not in self._senders:
            self._senders["sim"] = Sender(self.cfg.in_endpoint(self.sim, self.rd), "session", timeout_s=2.0)
        t_sent = now_ns()
        self._senders["sim"].send(
            SimCommand.TOPIC,
            SimCommand(kind="reset", cube_pose=None if cube_pose is None else np.asarray(cube_pose, float)),
        )
        obj = self.sub.latest(ObjectState.TOPIC)
        # the first object state stamped clearly after the reset (its ticks handle inputs first)
        while obj is None or obj.stamp_ns < t_sent + 50_000_000:
            obj = self.sub.wait_for(ObjectState.TOPIC, 5, newer_than_seq=-1 if obj is None else obj.seq)
            if obj is None or now_ns() - t_sent > 5e9:
                raise SessionError("the sim world did not reset within 5 s", self.logs.tail())
        cube = np.asarray(obj.cube_pose, float)
        if start_pose is not None:
            self.move_pose(start_pose, speed=0.2)
        time.sleep(0.3)  # cameras render the new scene
        return cube

    def close(self) -> None:
        for s in self._senders.values():
            s.close()
        for client in self.arms.values():
            client.close()
        if self.sub is not None:
            self.sub.close()
        self.launcher.stop()
        if self._sup is not None:
            self._sup.join(10)
