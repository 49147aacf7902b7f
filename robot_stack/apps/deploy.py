"""``robot-stack deploy``: run a trained policy on the robot (sim by default) for N episodes.

Each episode: reset period (arm home; sim: cube placed at random, or at given poses), ``start`` to
the controller, the policy runs through the controller's strategy until the task succeeds or the
episode times out, ``stop`` (the arm holds). The success check uses the sim's ground truth and
the config's task (``robot_stack.tasks``: reach, pick, press or lift); on hardware the operator answers. The summary table gives success
rate, completion time, control-loop jitter, inference latency, dropped actions and end-to-end
latency (frame capture -> waypoints built from it sent to the arm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_stack.runtime.clock import now_ns
from robot_stack.tasks import ReachTask, task_for_config
from robot_stack.apps.failures import EpisodeEvidence, Failure, classify, counter_delta, failure_counts
from robot_stack.apps.session import episode_task_text
from robot_stack.comm.messages import Heartbeat, RobotState, WaypointSchedule
from robot_stack.drivers.sim_messages import ObjectState


@dataclass
class DeployResult:
    success: list[bool] = field(default_factory=list)
    completion_s: list[float] = field(default_factory=list)  # time to success (successful episodes)
    final_xy_err_mm: list[float] = field(default_factory=list)  # the task's error at the end (error_name), error_unit
    error_name: str = "TCP-cube"
    error_unit: str = "mm"
    final_tcp: list[list[float]] = field(default_factory=list)  # TCP xyz at the episode's end, m
    controller: dict[str, float] = field(default_factory=dict)
    policy: dict[str, float] = field(default_factory=dict)
    arm: dict[str, float] = field(default_factory=dict)  # the (first) arm node's heartbeat metrics
    arms: dict[str, dict[str, float]] = field(default_factory=dict)  # every arm node's, by name
    final_tcp_arms: dict[str, list[list[float]]] = field(default_factory=dict)  # several arms: each one's final TCP, m
    cube_poses: list[list[float]] = field(default_factory=list)
    policy_waypoints: int = 0  # waypoints with origin "policy" the controller sent
    policy_waypoints_arms: dict[str, int] = field(default_factory=dict)  # several arms: each one's
    reset_retries: int = 0  # reset moves sent again (Session.move_joints / move_pose)
    failures: list[Failure] = field(default_factory=list)  # each failed episode's named cause

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if self.success else 0.0


def deploy_nodes(cfg, remote: bool = False) -> list[str]:
    """Nodes a deployment needs: everything but the recorder, the scripted expert and cameras no
    controller observes (rendering or streaming them would only take CPU from the loop); with
    ``remote`` (the policy served elsewhere), no policy node either. A person's teleop device
    stays, for intervention."""
    used = {c for nc in cfg.nodes.values() if nc.kind == "controller" for c in nc.typed.cameras}
    return [
        n
        for n, nc in cfg.nodes.items()
        if nc.kind != "recorder"
        and not (remote and nc.kind == "policy")
        and (nc.kind != "camera" or n in used)
        and not (nc.kind == "teleop" and nc.typed.device.type == "scripted")
    ]


def run_episodes(
    session,
    episodes: int,
    max_episode_s: float,
    task: ReachTask | None = None,
    cube_poses: list | None = None,
    console=None,
    label: str = "policy",
    seed: int = 0,
    controller: str | None = None,
) -> DeployResult:
    """Run ``episodes`` policy episodes on a started session (sim world required for success);
    each starts at a randomized start pose (``task.start_pose``, seeded) with the TCP orientation of
    the arm's home posture (not where the previous episode left it: demonstrations start there
    too, since the experts never turn the TCP). ``task``: default the
    config's (:func:`task_for_config`). ``controller``: the controller node to drive (default: the
    session's only one)."""
    from rich.console import Console

    console = console or Console()
    cfg = session.cfg
    task = task or task_for_config(cfg)
    ctl = [controller] if controller else [n for n in session.nodes if cfg.nodes[n].kind == "controller"]
    res = DeployResult(error_name=task.error_name, error_unit=task.error_unit)
    rng = np.random.default_rng(seed)
    seq0 = (
        session.sub.latest(WaypointSchedule.EXECUTED_TOPIC).seq
        if session.sub.latest(WaypointSchedule.EXECUTED_TOPIC)
        else -1
    )
    n_policy_wp = 0
    arm_names = list(getattr(session, "arm_names", [session.arm_name]))
    evidence: list[EpisodeEvidence] = []
    before: tuple[dict, dict] | None = None  # (controller, arms) heartbeat counters at an episode's start

    def snapshot() -> tuple[dict, dict]:
        return (session.heartbeat(ctl[0]) if ctl else {}), {a: session.heartbeat(a) for a in arm_names}

    def close_evidence() -> None:
        # an episode's counters run to the next episode's start (the heartbeats after its reset),
        # or to the last heartbeat after the last episode
        nonlocal before
        c1, a1 = snapshot()
        if evidence and before is not None:
            evidence[-1].controller = counter_delta(before[0], c1)
            evidence[-1].arms = {a: counter_delta(before[1].get(a, {}), a1[a]) for a in arm_names}
        before = (c1, a1)

    for ep in range(episodes):
        with console.status(f"{label}: reset for episode {ep + 1}/{episodes} ..."):
            cube = session.reset(
                None if cube_poses is None else cube_poses[ep], start_pose=task.start_pose(rng, session.home_pose()[3:])
            )
        if cube is None:
            raise RuntimeError("deploy's success check needs the sim world (hardware: use collect with intervention)")
        res.cube_poses.append(cube.tolist())
        session.raise_if_dead()  # a node that refused its setup (a spec mismatch) is named, not a send timeout
        close_evidence()
        session.send_event("start", ctl, episode=ep, task=episode_task_text(cfg, task))
        t0 = now_ns()
        ok, t_ok = False, None
        rise_max = 0.0  # the object's highest rise over where it lay (grasping tasks), m
        with console.status(f"{label}: episode {ep + 1}/{episodes} running ...") as st:
            while (now_ns() - t0) / 1e9 < max_episode_s:
                time.sleep(0.05)
                session.raise_if_dead()
                s, o = session.state(), session.sub.latest(ObjectState.TOPIC)
                if o is not None:
                    rise_max = max(rise_max, float(o.cube_pose[2]) - float(cube[2]))
                if task.achieved(s, o, cube[:3]):
                    t_ok = t_ok or now_ns()
                    if (now_ns() - t_ok) / 1e9 >= task.hold_s:  # held, not passed through
                        ok = True
                        break
                else:
                    t_ok = None
                st.update(
                    f"{label}: episode {ep + 1}/{episodes}: {(now_ns() - t0) / 1e9:4.1f} s, "
                    f"{task.error_name} {task.error_mm(s, o):5.1f} {task.error_unit}"
                )
        session.send_event("stop", ctl, episode=ep)
        # the controller reads events once per control step: until then it may still send the
        # policy's schedules, which would take over the reset's move (the arm merges at "now")
        time.sleep(2.0 / min(cfg.nodes[c].typed.rate_hz for c in ctl) if ctl else 0.0)
        s, o = session.state(), session.sub.latest(ObjectState.TOPIC)
        res.success.append(ok)
        res.final_xy_err_mm.append(task.error_mm(s, o))
        res.final_tcp.append([float(v) for v in s.ee_pose[:3]])
        grasps = getattr(task, "grasps", False) and o is not None
        evidence.append(
            EpisodeEvidence(
                episode=ep,
                success=ok,
                final_error=res.final_xy_err_mm[-1],
                near_goal=task.near_goal(res.final_xy_err_mm[-1]),
                error_name=task.error_name,
                error_unit=task.error_unit,
                object_rise_max_m=rise_max if grasps else None,
                object_rise_end_m=float(o.cube_pose[2]) - float(cube[2]) if grasps else None,
                gripper_end_m=float(s.gripper_width) if grasps else None,
            )
        )
        arms = getattr(session, "arm_names", [])
        for arm in arms if len(arms) > 1 else []:  # several arms: each one's final TCP
            res.final_tcp_arms.setdefault(arm, []).append([float(v) for v in session.state(arm).ee_pose[:3]])
        if ok:
            res.completion_s.append((t_ok - t0) / 1e9)
        acts = [m for m in session.sub.history(WaypointSchedule.EXECUTED_TOPIC) if m.seq > seq0]
        if acts:
            seq0 = acts[-1].seq
        n_policy_wp += sum(len(m.stamps_ns) for m in acts if m.origin == "policy")
        for m in acts:  # several arms: each one's (its schedules name it)
            if m.origin == "policy" and m.arm:
                res.policy_waypoints_arms[m.arm] = res.policy_waypoints_arms.get(m.arm, 0) + len(m.stamps_ns)
        console.print(
            f"{label} episode {ep + 1}/{episodes}: {'success' if ok else 'failure'} "
            f"({(now_ns() - t0) / 1e9:.1f} s, final {task.error_name} {res.final_xy_err_mm[-1]:.1f} {task.error_unit})"
        )
    time.sleep(1.2)  # one more heartbeat with the last episode's metrics
    close_evidence()
    res.failures = [f for f in map(classify, evidence) if f is not None]
    res.policy_waypoints = n_policy_wp
    res.reset_retries = getattr(session, "reset_retries", 0)
    res.controller = session.heartbeat(ctl[0]) if ctl else {}
    pol = [n for n in session.nodes if cfg.nodes[n].kind == "policy"]
    res.policy = session.heartbeat(pol[0]) if pol else {}
    res.arm = session.heartbeat(session.arm_name)
    res.arms = {a: session.heartbeat(a) for a in getattr(session, "arm_names", [session.arm_name])}
    return res


def summary_table(res: DeployResult, title: str, baseline: tuple[int, int] | None = None):
    """A rich table of a deployment's figures."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("policy success", f"{sum(res.success)}/{len(res.success)} ({100 * res.success_rate:.0f} %)")
    if baseline is not None:
        t.add_row(
            "scripted expert success (same task)",
            f"{baseline[0]}/{baseline[1]} ({100 * baseline[0] / max(1, baseline[1]):.0f} %)",
        )
    if res.completion_s:
        t.add_row(
            "completion time (successes) mean / max",
            f"{np.mean(res.completion_s):.1f} / {np.max(res.completion_s):.1f} s",
        )
    t.add_row(f"final {res.error_name} median", f"{np.median(res.final_xy_err_mm):.1f} {res.error_unit}")
    c, p, a = res.controller, res.policy, res.arm
    if c:
        t.add_row(
            "control loop period p50 / p99",
            f"{c.get('loop.period_p50_s', 0) * 1e3:.1f} / {c.get('loop.period_p99_s', 0) * 1e3:.1f} ms",
        )
        t.add_row(
            "inference round trip p50 / p99",
            f"{c.get('inference_p50_ms', float('nan')):.1f} / {c.get('inference_p99_ms', float('nan')):.1f} ms",
        )
        t.add_row(
            "end-to-end: capture -> waypoints sent p50 / p99",
            f"{c.get('e2e_p50_ms', float('nan')):.0f} / {c.get('e2e_p99_ms', float('nan')):.0f} ms",
        )
        t.add_row(
            "chunks / dropped (stale) actions / over budget",
            f"{c.get('chunks', 0):.0f} / {c.get('dropped_actions', 0):.0f} / {c.get('over_budget', 0):.0f}",
        )
        t.add_row("observation holds (stale stream)", f"{c.get('obs_holds', 0):.0f}")
        if c.get("skew_holds"):
            t.add_row("  of them: cameras out of sync (skew bound)", f"{c['skew_holds']:.0f}")
        if "fast_ticks" in c:
            t.add_row(
                "fast layer: ticks / corrections, period p50 / p99, compute p99",
                f"{c['fast_ticks']:.0f} / {c.get('fast_corrections', 0):.0f}, "
                f"{c.get('fast_period_p50_ms', float('nan')):.1f} / {c.get('fast_period_p99_ms', float('nan')):.1f} ms, "
                f"{c.get('fast_compute_p99_ms', float('nan')):.2f} ms",
            )
        stages = [
            ("camera pipeline (capture -> frame at the controller)", "frame_arrival"),
            ("frame age at request", "frame_age"),
            ("observation assembly", "assembly"),
            ("transport (round trip - compute)", "transport"),
            ("inference (policy compute)", "inference"),
            ("planning (strategy)", "planning"),
            ("waypoint send", "send"),
            ("camera skew (spread of an observation's frames)", "camera_skew"),
            ("robot state extrapolated to the anchor", "state_skew"),
        ]
        for label, k in stages:
            if f"stage_{k}_p50_ms" in c:
                t.add_row(
                    f"  latency: {label} p50 / p99", f"{c[f'stage_{k}_p50_ms']:.1f} / {c[f'stage_{k}_p99_ms']:.1f} ms"
                )
    if a and "merge_latency_p50_ms" in a:
        t.add_row(
            "  latency: arm merge (send -> first servo tick) p50 / p99",
            f"{a['merge_latency_p50_ms']:.1f} / {a['merge_latency_p99_ms']:.1f} ms",
        )
    if p:
        t.add_row(
            "policy compute p50 / p99",
            f"{p.get('inference_p50_ms', float('nan')):.1f} / {p.get('inference_p99_ms', float('nan')):.1f} ms",
        )
    for name, m in res.arms.items() if len(res.arms) > 1 else [("", a)] if a else []:
        at = f" ({name})" if name else ""
        t.add_row(
            f"servo loop period p99 / overruns{at}",
            f"{m.get('loop.period_p99_s', 0) * 1e3:.2f} ms / {m.get('loop.overruns', 0):.0f}",
        )
        t.add_row(f"safety events{at}", f"{sum(v for k, v in m.items() if k.startswith('safety.')):.0f}")
    t.add_row("waypoints sent by the policy", f"{res.policy_waypoints}")
    if res.reset_retries:
        t.add_row("reset moves sent again (arm not there)", f"{res.reset_retries}")
    return t


def failure_table(res: DeployResult, title: str = "failed episodes"):
    """A rich table of a deployment's failed episodes, by named cause
    (:mod:`robot_stack.apps.failures`): each cause's count, then each failed episode's cause,
    detail and other signals. None when every episode succeeded."""
    from rich.table import Table

    from robot_stack.apps.failures import CAUSES

    if not res.failures:
        return None
    t = Table(title=f"{title}: {len(res.failures)} of {len(res.success)}")
    t.add_column("episode / cause")
    t.add_column("why")
    t.add_column("also counted")
    for cause, n in failure_counts(res.failures).items():
        t.add_row(f"[bold]{cause}[/bold]", f"[bold]{CAUSES[cause]}: {n}[/bold]", "")
    t.add_section()
    for f in res.failures:
        t.add_row(f"episode {f.episode + 1}: {f.cause}", f.detail, ", ".join(f.notes))
    return t


def deploy_backend(own: dict | None, policy: Path) -> dict:
    """The policy node's backend for ``policy`` (a .safetensors checkpoint or an .onnx export): the
    config's own backend keys stay (``seed``, ``noise_scale``; all of them when the config names
    the same backend type, e.g. a checkpoint's ``device``), the file replaces its ``path``."""
    kind = "onnx" if Path(policy).suffix == ".onnx" else "checkpoint"
    own = dict(own or {})
    own = own if own.get("type") == kind else {k: v for k, v in own.items() if k in ("seed", "noise_scale")}
    return {**own, "type": kind, "path": str(policy)}


def deploy_session(
    config: str | Path,
    policy: str | Path | None,
    strategy: str | None = None,
    seed: int | None = None,
    view: str | None = None,
    verbose: bool = False,
    sets: dict | None = None,
    fast: str | Path | None = None,
    endpoint: str | None = None,
):
    """A (not yet started) Session of ``config`` serving ``policy`` (.safetensors or .onnx) with the
    controller driven by the policy; returns (session, policy node name). ``endpoint``: instead of
    ``policy``, a policy served elsewhere (``ws://``/``wss://``: openpi's protocol; ``tcp://``:
    ours), which the controller calls; no local policy node is started (the name returned is
    None). ``fast``: a fast-layer file (slow-fast control, ``robot-stack train-fast``) the
    controller runs. ``sets``: more config overrides (dotted paths, e.g.
    ``nodes.controller.params.cameras``), applied before the node selection (a camera the
    controller then observes is started).

    Raises:
        ValueError: neither or both of ``policy`` and ``endpoint``; the config has no controller
            node, or no policy node for a local policy. FileNotFoundError: no such policy.
    """
    from robot_stack.runtime.config import load_config
    from robot_stack.apps.session import Session, viewer_sets

    import tempfile

    from robot_stack.apps.session import write_overridden

    with tempfile.TemporaryDirectory() as d:  # the setup as the overrides make it (which cameras it observes)
        cfg = load_config(write_overridden(config, sets, Path(d)))
    if (policy is None) == (endpoint is None):
        raise ValueError("deploy needs either a policy file or a policy endpoint (not both)")
    pol = [n for n, nc in cfg.nodes.items() if nc.kind == "policy"]
    ctl = [n for n, nc in cfg.nodes.items() if nc.kind == "controller"]
    if not ctl or (endpoint is None and not pol):
        raise ValueError(f"{config}: deploy needs a controller node" + ("" if endpoint else " and a policy node"))
    nodes = deploy_nodes(cfg, remote=endpoint is not None)
    teleop = cfg.nodes[ctl[0]].typed.teleop
    extra_sets, sets = (
        sets,
        {
            f"nodes.{ctl[0]}.params.source": "policy",
            f"nodes.{ctl[0]}.params.teleop": teleop if teleop in nodes else None,
            f"nodes.{ctl[0]}.params.autostart": False,
        },
    )
    if endpoint is not None:
        sets[f"nodes.{ctl[0]}.params.policy_endpoint"] = endpoint
        pol = [None]
    else:
        policy = Path(policy).resolve()
        if not policy.exists():
            raise FileNotFoundError(f"policy {policy} not found")
        sets[f"nodes.{pol[0]}.params.backend"] = deploy_backend(
            cfg.nodes[pol[0]].typed.backend.model_dump(mode="json"), policy
        )
    if strategy:
        sets[f"nodes.{ctl[0]}.params.strategy"] = strategy
    if fast is not None:
        fast = Path(fast).resolve()
        if not fast.is_file():
            raise FileNotFoundError(f"fast layer {fast} not found")
        sets[f"nodes.{ctl[0]}.params.fast"] = str(fast)
    for n, nc in cfg.nodes.items():
        if nc.kind == "sim_world" and seed is not None:
            sets[f"nodes.{n}.params.seed"] = seed
    sets.update(viewer_sets(cfg, view, cameras=[n for n in nodes if cfg.nodes[n].kind == "camera"]))
    sets = {**(extra_sets or {}), **sets}
    return Session(config, sets=sets, only=nodes + (["viewer"] if view else []), verbose=verbose), pol[0]


def run_deploy(
    config: str | Path,
    policy: str | Path,
    episodes: int,
    strategy: str | None = None,
    max_episode_s: float = 20.0,
    seed: int | None = None,
    verbose: bool = False,
    console=None,
    view: str | None = None,
    fast: str | Path | None = None,
    endpoint: str | None = None,
) -> DeployResult:
    """Start the stack with ``policy`` (a .safetensors checkpoint or an .onnx export) or a policy
    served at ``endpoint`` (no local policy node), and the fast layer ``fast`` when given
    (slow-fast control), and run episodes."""
    from rich.console import Console

    console = console or Console()
    session, pol = deploy_session(config, policy, strategy, seed, view, verbose, fast=fast, endpoint=endpoint)
    try:
        with console.status("starting the stack (the policy node loads its model) ..."):
            session.start((RobotState.TOPIC,) + ((Heartbeat.topic(pol),) if pol else ()))
        res = run_episodes(session, episodes, max_episode_s, console=console, seed=1000 if seed is None else seed)
    finally:
        session.close()
    ctl = [n for n in session.nodes if session.cfg.nodes[n].kind == "controller"][0]
    label = f"deploy {Path(policy).name if policy else endpoint}" + (f" + fast layer {Path(fast).name}" if fast else "")
    console.print(summary_table(res, f"{label} ({session.cfg.nodes[ctl].typed.strategy})"))
    if (ft := failure_table(res)) is not None:
        console.print(ft)
    return res
