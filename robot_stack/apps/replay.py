"""``robot-stack replay``: re-execute a recorded episode's actions through the controller.

The arm goes to the episode's first recorded joint state; on the sim the cube is placed where it
was recorded. The executed action stream (the waypoints the controller sent during recording) is
re-timed to now and sent to the controller's input, which executes it like a chunk (same safety
path, origin ``replay``). The result compares the replayed TCP trajectory with the recorded one
(time-aligned at the first action), in mm, and also after the best constant time shift within
±``MAX_LAG_S`` (the replay's tracking lag differs from the recording's when the machine is loaded
and the sim falls behind real time; a constant lag is timing, not path).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_stack.runtime.clock import now_ns
from robot_stack.comm.messages import RobotState


MAX_LAG_S = 0.15  # s: the search range of the constant time shift
LAG_STEP_S = 0.005


@dataclass
class ReplayResult:
    """Replayed vs recorded TCP position (base frame), in mm over ``samples`` replayed states.

    ``mean_err_mm``/``max_err_mm``/``final_err_mm`` compare at the same time from the first action;
    ``lag_ms`` is the constant shift (replay later than recording when > 0) that minimises the mean
    error, and ``mean_err_lag_mm``/``max_err_lag_mm`` are the errors at that shift.
    """

    mean_err_mm: float
    max_err_mm: float
    final_err_mm: float
    samples: int
    lag_ms: float = 0.0
    mean_err_lag_mm: float = 0.0
    max_err_lag_mm: float = 0.0
    per_arm: dict[str, float] = field(default_factory=dict)  # several arms: arm node -> mean error, mm


def path_error_mm(
    t_new: np.ndarray, p_new: np.ndarray, t_rec: np.ndarray, p_rec: np.ndarray, lag_s: float = 0.0
) -> np.ndarray:
    """Per-sample distance (mm) of positions ``p_new`` (N, 3, m) at times ``t_new`` (N, int ns) from
    the recorded path ``p_rec`` (M, 3, m) at ``t_rec`` (M, int ns, increasing), read ``lag_s`` earlier."""
    t = t_new.astype(np.float64) - lag_s * 1e9
    rec = np.stack([np.interp(t, t_rec.astype(np.float64), p_rec[:, j]) for j in range(3)], 1)
    return np.linalg.norm(p_new - rec, axis=1) * 1e3


def best_lag(
    t_new: np.ndarray,
    p_new: np.ndarray,
    t_rec: np.ndarray,
    p_rec: np.ndarray,
    max_lag_s: float = MAX_LAG_S,
    step_s: float = LAG_STEP_S,
) -> tuple[float, np.ndarray]:
    """The constant shift in [-max_lag_s, max_lag_s] (grid of ``step_s``, s) with the least mean
    :func:`path_error_mm`; returns (lag_s, errors at it)."""
    best = (0.0, path_error_mm(t_new, p_new, t_rec, p_rec))
    for lag in np.arange(-max_lag_s, max_lag_s + step_s / 2, step_s):
        e = path_error_mm(t_new, p_new, t_rec, p_rec, float(lag))
        if e.mean() < best[1].mean():
            best = (float(lag), e)
    return best


def replay_episode(session, episode_path: str | Path, lead_s: float = 0.5) -> ReplayResult:
    """Replay one episode on a started session (controller + arm, sim optional); returns the TCP
    error. A two-arm episode (streams ``robot_state/<arm>``, ``action/<arm>``): every arm goes to its
    recorded start state, each arm's actions go to the controller as its own schedule on the same
    stamps, and the errors are over both arms' TCPs (``per_arm``: each arm's mean error, mm).

    Raises:
        ValueError: no recorded actions, or the episode's arms are not the session's arm nodes.
    """
    from robot_stack.comm.messages import WaypointSchedule
    from robot_stack.comm.transport import Sender
    from robot_stack.data.dataset import episode_arms, open_episode

    ep = open_episode(episode_path)
    arms = episode_arms(ep)
    if arms != [""] and sorted(arms) != sorted(session.arm_names):
        raise ValueError(f"{episode_path}: recorded with the arms {arms}, this setup has {session.arm_names}")
    suffix = {a: f"/{a}" if a else "" for a in arms}
    rs = {a: ep.load(f"robot_state{suffix[a]}") for a in arms}
    act = {a: ep.load(f"action{suffix[a]}") for a in arms}
    if any(len(v["target_ns"]) == 0 for v in act.values()):
        raise ValueError(f"{episode_path}: no recorded actions to replay")
    cube = ep.load("sim_objects")["cube_pose"][0] if "sim_objects" in ep.streams() else None
    cfg = session.cfg
    ctl = [n for n in session.nodes if cfg.nodes[n].kind == "controller"]
    session.reset(cube_pose=cube)
    for a in arms:
        session.move_joints(rs[a]["q"][0], arm=a or None)  # the recorded start state
    parts = {}
    for a in arms:
        order = np.argsort(act[a]["target_ns"], kind="stable")
        t_rec, poses, grip = act[a]["target_ns"][order], act[a]["pose"][order], act[a]["gripper"][order]
        keep = np.r_[t_rec[1:] != t_rec[:-1], True]
        parts[a] = (t_rec[keep], poses[keep], grip[keep])
    t0_rec = int(parts[arms[0]][0][0])
    session.send_event("start", ctl)
    time.sleep(0.2)
    t_new0 = now_ns() + int(lead_s * 1e9)
    shift = t_new0 - t0_rec
    tx = Sender(cfg.in_endpoint(ctl[0], session.rd), "replay", timeout_s=2.0)
    try:
        for a, (t_rec, poses, grip) in parts.items():
            tx.send(
                WaypointSchedule.TOPIC,
                WaypointSchedule(
                    stamps_ns=(t_rec + shift).astype(np.int64),
                    positions=poses,
                    space="ee",
                    gripper=grip,
                    origin="replay",
                    arm=a,
                ),
            )
    finally:
        tx.close()
    end = int(max(p[0][-1] for p in parts.values()) + shift)
    time.sleep(max(0.0, (end - now_ns()) / 1e9) + 0.8)
    session.send_event("stop", ctl)
    errs, errs_lag, lags, per_arm = [], [], [], {}
    for a in arms:
        hist = session.sub.history(RobotState.TOPIC)
        states = [m for m in hist if t_new0 <= m.stamp_ns <= end and (not a or m.source == a)]
        if len(states) < 10:
            raise RuntimeError(f"replay: the arm {a or session.arm_name} published too few states during the replay")
        t_new = np.array([m.stamp_ns for m in states]) - shift
        p_new = np.array([m.ee_pose[:3] for m in states])
        errs.append(path_error_mm(t_new, p_new, rs[a]["stamp_ns"], rs[a]["ee_pose"][:, :3]))
        lag, e = best_lag(t_new, p_new, rs[a]["stamp_ns"], rs[a]["ee_pose"][:, :3])
        lags.append(lag)
        errs_lag.append(e)
        per_arm[a] = float(errs[-1].mean())
    err, err_lag = np.concatenate(errs), np.concatenate(errs_lag)
    return ReplayResult(
        float(err.mean()),
        float(err.max()),
        float(max(e[-1] for e in errs)),
        len(err),
        float(np.mean(lags)) * 1e3,
        float(err_lag.mean()),
        float(err_lag.max()),
        per_arm if arms != [""] else {},
    )


def run_replay(config: str | Path, episode: str | Path, verbose: bool = False, console=None) -> ReplayResult:
    """Start the stack (no policy, teleop or recorder) and replay ``episode``."""
    from rich.console import Console

    from robot_stack.runtime.config import load_config
    from robot_stack.apps.session import Session

    console = console or Console()
    cfg = load_config(config)
    ctl = [n for n, nc in cfg.nodes.items() if nc.kind == "controller"]
    if not ctl:
        raise ValueError(f"{config}: replay needs a controller node")
    only = [n for n, nc in cfg.nodes.items() if nc.kind not in ("teleop", "recorder", "policy", "camera")]
    session = Session(
        config,
        sets={
            f"nodes.{ctl[0]}.params.source": "external",
            f"nodes.{ctl[0]}.params.teleop": None,
            f"nodes.{ctl[0]}.params.autostart": False,
            f"nodes.{ctl[0]}.params.cameras": [],
        },
        only=only,
        verbose=verbose,
    )
    try:
        with console.status("starting the stack ..."):
            session.start((RobotState.TOPIC,))
        with console.status(f"replaying {Path(episode).name} ..."):
            res = replay_episode(session, episode)
    finally:
        session.close()
    console.print(
        f"replayed {Path(episode).name}: TCP vs recorded mean {res.mean_err_mm:.2f} mm, "
        f"max {res.max_err_mm:.2f} mm, final {res.final_err_mm:.2f} mm ({res.samples} states); "
        f"at its best constant lag ({res.lag_ms:+.0f} ms) mean {res.mean_err_lag_mm:.2f} mm, "
        f"max {res.max_err_lag_mm:.2f} mm"
        + ("; per arm mean " + ", ".join(f"{a} {e:.2f} mm" for a, e in res.per_arm.items()) if res.per_arm else "")
    )
    return res
