"""Slow-fast control (RDP-style, ``robot_stack.control.fast``) against the slow policy alone, on
the press task (``configs/sim_panda_press.yaml``: press the cube down with 8 N; its contact
softness is random each episode and unseen by the cameras).

One run: collect ``--demos`` press demonstrations with the force-controlled expert (or reuse
``--episodes DIR``), train the slow policy (one-step flow, wrist RGB + proprioception, chunks at
10 Hz), fit the fast layer on it (``robot-stack train-fast``: 50 Hz, the wrist wrench), then deploy
the slow policy alone (the baseline) and with the fast layer on the same ``--eval`` episodes
(same seed). Each deployment runs in its own process.

Columns: success (8 N +- 25 % held 1 s over the cube), completion time of the successes, final
force error |Fz - 8 N| median, and for slow-fast the fast tick period p50/p99 and its compute p99.
Ratios against the baseline are printed under the table.

Run: ``python bench/slowfast.py`` (40 demonstrations, 1500 slow steps, 3000 fast steps, 20
episodes each); ``--quick`` proves the path (CI: 3 demonstrations, 30 slow steps, 200 fast steps,
1 episode each: the success column means nothing there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

VARIANTS = {"slow": "slow policy alone (chunks at 10 Hz)", "slowfast": "slow policy + fast layer (50 Hz, wrist wrench)"}


def run_variant(name: str, work: Path, args, config: Path) -> dict:
    """Deploy one variant on the evaluation episodes; returns its figures."""
    from robot_stack.apps.deploy import deploy_session, run_episodes
    from robot_stack.comm.messages import Heartbeat, RobotState

    fast = work / "fast.safetensors" if name == "slowfast" else None
    session, pol = deploy_session(config, work / "slow.safetensors", seed=1000, fast=fast)
    try:
        session.start((RobotState.TOPIC, Heartbeat.topic(pol)))
        res = run_episodes(session, args.eval, args.max_episode_s, seed=1000, label=name)
    finally:
        session.close()
    c = res.controller
    return {
        "variant": name,
        "success": int(sum(res.success)),
        "episodes": len(res.success),
        "completion_s": float(np.mean(res.completion_s)) if res.completion_s else None,
        "final_force_err_n": float(np.median(res.final_xy_err_mm)),
        "fast_period_p50_ms": c.get("fast_period_p50_ms"),
        "fast_period_p99_ms": c.get("fast_period_p99_ms"),
        "fast_compute_p99_ms": c.get("fast_compute_p99_ms"),
        "fast_corrections": c.get("fast_corrections"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="prove the path (CI)")
    ap.add_argument("--episodes", type=Path, default=None, help="press demonstrations to reuse (default: collect)")
    ap.add_argument("--demos", type=int, default=None, help="demonstrations to collect (default 40; quick 3)")
    ap.add_argument("--steps", type=int, default=None, help="slow policy training steps (default 1500; quick 30)")
    ap.add_argument("--fast-steps", type=int, default=None, help="fast layer steps (default 3000; quick 200)")
    ap.add_argument("--eval", type=int, default=None, help="evaluation episodes per variant (default 20; quick 1)")
    ap.add_argument("--max-episode-s", type=float, default=20.0)
    ap.add_argument("--work", type=Path, default=None, help="folder for episodes, models and results.json")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: deploy one variant in this process
    args = ap.parse_args()
    args.demos = args.demos or (3 if args.quick else 40)
    args.steps = args.steps or (30 if args.quick else 1500)
    args.fast_steps = args.fast_steps or (200 if args.quick else 3000)
    args.eval = args.eval or (1 if args.quick else 20)
    if args.quick:
        args.max_episode_s = min(args.max_episode_s, 8.0)

    from rich.console import Console
    from rich.table import Table

    from robot_stack.apps.collect import run_collect
    from robot_stack.apps.demo import config_path
    from robot_stack.data.dataset import list_episodes
    from robot_stack.policies.fast_training import train_fast
    from robot_stack.policies.generative import ModelConfig
    from robot_stack.policies.training import TrainSettings, train

    console = Console(width=max(Console().width, 140))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-slowfast-"))
    work.mkdir(parents=True, exist_ok=True)
    config = config_path("sim_panda_press.yaml")
    if args.one:
        (work / f"{args.one}.json").write_text(json.dumps(run_variant(args.one, work, args, config)))
        return 0
    if args.episodes is not None:
        episodes = list_episodes(args.episodes)
    else:
        episodes = run_collect(config, work / "episodes", args.demos, max_episode_s=20.0, seed=1, console=console).saved
    console.rule(f"slow policy: {args.steps} steps on {len(episodes)} demonstrations")
    t0 = time.perf_counter()
    ts = TrainSettings(
        model=ModelConfig(),
        steps=args.steps,
        val_fraction=0.1 if len(episodes) >= 10 else 0.34,
        checkpoint_every=max(1, args.steps),
    )
    train(ts, episodes, work / "slow.safetensors", progress=not args.quick)
    slow_s = time.perf_counter() - t0
    console.rule(f"fast layer: {args.fast_steps} steps")
    fs = train_fast(work / "slow.safetensors", episodes, work / "fast.safetensors", steps=args.fast_steps)
    console.print(json.dumps(fs))
    results = []
    for v in VARIANTS:
        console.rule(f"deploy: {VARIANTS[v]}")
        cmd = [
            sys.executable,
            __file__,
            "--one",
            v,
            "--work",
            str(work),
            "--eval",
            str(args.eval),
            "--max-episode-s",
            str(args.max_episode_s),
        ] + (["--quick"] if args.quick else [])
        rc = subprocess.run(cmd).returncode
        f = work / f"{v}.json"
        if rc != 0 or not f.exists():
            console.print(f"[red]{v} failed (exit {rc})[/red]")
            return 1
        results.append(json.loads(f.read_text()))
    (work / "results.json").write_text(
        json.dumps({"fast_training": fs, "slow_train_s": slow_s, "rows": results}, indent=1)
    )

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    t = Table(
        title=f"press 8 N (random unseen softness): {len(episodes)} demonstrations, slow {args.steps} steps "
        f"({slow_s:.0f} s), fast {args.fast_steps} steps ({fs['train_time_s']:.0f} s), {args.eval} episodes each"
    )
    for c in (
        "controller",
        "success",
        "completion s",
        "final |Fz - 8 N| median",
        "fast tick p50 / p99 ms",
        "fast compute p99 ms",
    ):
        t.add_column(c, justify="left" if c == "controller" else "right")
    for o in results:
        t.add_row(
            VARIANTS[o["variant"]],
            f"{o['success']}/{o['episodes']}",
            f(o["completion_s"], ".1f"),
            f"{o['final_force_err_n']:.1f} N",
            "-"
            if o["fast_period_p50_ms"] is None
            else f"{o['fast_period_p50_ms']:.1f} / {o['fast_period_p99_ms']:.1f}",
            f(o["fast_compute_p99_ms"], ".2f"),
        )
    console.print(t)
    base, sf = results
    console.print(
        f"slow-fast / slow alone: success {sf['success']}/{sf['episodes']} against {base['success']}/{base['episodes']}; "
        f"final force error {sf['final_force_err_n'] / max(base['final_force_err_n'], 1e-9):.2f}x; "
        f"fast layer held-out velocity residual RMS {fs['residual_rms_mm_s_with']:.1f} mm/s against "
        f"{fs['residual_rms_mm_s_without']:.1f} mm/s without it"
    )
    console.print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
