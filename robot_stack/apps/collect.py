"""``robot-stack collect``: teleoperated demonstrations into a dataset folder.

Starts the stack without the policy node, then runs the episode loop: reset period (arm home, sim
cube placed), ``start`` to recorder/controller/teleop, teleop drives the arm through the
controller (same waypoint path and safety as a policy), and the episode ends on a teleop button
(``episode_stop`` saves, ``episode_discard`` discards and re-records, ``quit`` saves and ends the
session) or on ``max_episode_s`` (discarded: a demonstration that never finished is not kept).
A live status shows episode number, duration, rows written and dropped samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_stack.runtime.clock import now_ns
from robot_stack.apps.session import SessionError, episode_task_text
from robot_stack.tasks import task_for_config
from robot_stack.comm.messages import RobotState, TeleopCommand


@dataclass
class CollectResult:
    saved: list[Path] = field(default_factory=list)
    discarded: int = 0
    durations_s: list[float] = field(default_factory=list)
    dropped: float = 0.0
    cube_poses: list[list[float]] = field(default_factory=list)


def _nodes_of(cfg, kind: str) -> list[str]:
    return [n for n, nc in cfg.nodes.items() if nc.kind == kind]


def camera_topics(cfg, nodes: list[str]) -> list[str]:
    """The frame topics of the config's camera nodes among ``nodes`` (what a session waits for)."""
    from robot_stack.comm.messages import CameraFrame

    return [CameraFrame.topic(cfg.nodes[n].typed.camera_id) for n in nodes if cfg.nodes[n].kind == "camera"]


def run_collect(
    config: str | Path,
    out: str | Path,
    episodes: int,
    max_episode_s: float = 30.0,
    seed: int | None = None,
    verbose: bool = False,
    console=None,
    session=None,
    view: str | None = None,
) -> CollectResult:
    """Collect ``episodes`` saved demonstrations into ``out``; returns what was saved.

    Raises:
        RuntimeError: the stack failed (a node died, or did not come up), with its log tail.
    """
    from rich.console import Console

    from robot_stack.data.dataset import list_episodes
    from robot_stack.apps.session import Session, viewer_sets

    console = console or Console()
    own = session is None
    if own:
        from robot_stack.runtime.config import load_config

        cfg = load_config(config)
        only = [n for n, nc in cfg.nodes.items() if nc.kind != "policy"] + (["viewer"] if view else [])
        rec = _nodes_of(cfg, "recorder")
        if not rec:
            raise ValueError(f"{config}: collect needs a recorder node")
        session = Session(
            config,
            sets={
                f"nodes.{rec[0]}.params.root": str(Path(out).resolve()),
                **{f"nodes.{c}.params.source": "teleop" for c in _nodes_of(cfg, "controller")},
                **({f"nodes.{n}.params.seed": seed for n in _nodes_of(cfg, "sim_world")} if seed is not None else {}),
                **viewer_sets(cfg, view),
            },
            only=only,
            verbose=verbose,
        )
    cfg = session.cfg
    recorder = _nodes_of(cfg, "recorder")[0]
    targets = [n for n in session.nodes if cfg.nodes[n].kind in ("recorder", "controller", "teleop")]
    res = CollectResult()
    task = task_for_config(cfg)
    rng = np.random.default_rng(seed)
    try:
        if own:
            with console.status("starting the stack ..."):
                session.start((RobotState.TOPIC, *camera_topics(cfg, session.nodes)))
        n_before = len(list_episodes(out)) if Path(out).is_dir() else 0
        ep = 0
        while len(res.saved) < episodes:
            with console.status(f"reset for episode {ep} ..."):
                cube = session.reset(start_pose=task.start_pose(rng, session.home_pose()[3:]))
            saved_before = session.heartbeat(recorder).get("saved", 0.0)
            teleop_seq = session.sub.latest(TeleopCommand.TOPIC).seq if session.sub.latest(TeleopCommand.TOPIC) else -1
            session.send_event("start", targets, episode=ep, task=episode_task_text(cfg, task))
            t0 = now_ns()
            outcome = "timeout"
            with console.status("") as st:
                while True:
                    time.sleep(0.05)
                    session.raise_if_dead()
                    cmds = [c for c in session.sub.history(TeleopCommand.TOPIC) if c.seq > teleop_seq]
                    if cmds:
                        teleop_seq = cmds[-1].seq
                    buttons = {b for c in cmds for b in c.buttons}
                    if "episode_discard" in buttons:
                        outcome = "discard"
                    elif "quit" in buttons:
                        outcome = "quit"
                    elif "episode_stop" in buttons:
                        outcome = "save"
                    elif (now_ns() - t0) / 1e9 > max_episode_s:
                        outcome = "timeout"
                    else:
                        m = session.heartbeat(recorder)
                        st.update(
                            f"episode {ep} ({len(res.saved)}/{episodes} saved): "
                            f"{(now_ns() - t0) / 1e9:4.1f} s, {m.get('rows', 0):.0f} samples, "
                            f"dropped {m.get('dropped', 0):.0f}"
                        )
                        continue
                    break
            dur = (now_ns() - t0) / 1e9
            if outcome in ("save", "quit"):
                session.send_event("stop", targets, episode=ep)
                deadline = time.monotonic() + 15
                while session.heartbeat(recorder).get("saved", 0.0) <= saved_before and time.monotonic() < deadline:
                    time.sleep(0.05)
                if session.heartbeat(recorder).get("saved", 0.0) <= saved_before:
                    raise SessionError(f"the recorder did not save episode {ep}", session.logs.tail())
                path = list_episodes(out)[-1]
                res.saved.append(path)
                res.durations_s.append(dur)
                if cube is not None:
                    res.cube_poses.append(cube.tolist())
                console.print(f"episode {ep}: saved {path.name} ({dur:.1f} s)")
            else:
                session.send_event("discard", targets, episode=ep)
                res.discarded += 1
                console.print(f"episode {ep}: discarded ({'timed out' if outcome == 'timeout' else 'by the operator'})")
            ep += 1
            if outcome == "quit":
                break
        res.dropped = session.heartbeat(recorder).get("dropped", 0.0)
        assert len(list_episodes(out)) - n_before == len(res.saved)
    finally:
        if own:
            session.close()
    return res
