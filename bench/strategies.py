"""Execution strategies under inference delay, with a learned policy on the sim (issue: controller).

For each injected inference delay (0, 100, 200, 300 ms; the policy node sleeps that long before
each prediction) the stack is started once with four controller nodes, one per strategy (sync,
async, ensemble, rtc); each runs the same randomized reach episodes in turn (same cube poses and
start poses for every strategy). Printed per (delay, strategy): success rate, completion time,
and the jump in commanded position at chunk switches (mean / max over the run), i.e. the
discontinuity a strategy sends to the arm. Sync's jumps are the baseline the others are compared
with, per delay, in the same run.

Needs a trained checkpoint: ``python bench/strategies.py --policy policy.safetensors`` (the demo
writes one; ``--quick``: delays 0 and 200 ms, 2 episodes each).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robot_stack.comm.messages import Heartbeat, RobotState  # noqa: E402

STRATEGIES = ("sync", "async", "ensemble", "rtc")


def run_delay(policy: Path, delay_s: float, episodes: int, max_episode_s: float, console) -> dict:
    import yaml

    from robot_stack.apps.demo import config_path
    from robot_stack.apps.deploy import run_episodes
    from robot_stack.apps.session import Session

    base = yaml.safe_load(config_path("sim_panda_reach.yaml").read_text())
    ctl = base["nodes"].pop("controller")
    for n in ("teleop", "recorder", "cam_scene"):
        base["nodes"].pop(n)
    ctl["params"].update(source="policy", teleop=None, autostart=False)
    for s in STRATEGIES:
        c = {**ctl, "params": {**ctl["params"], "strategy": s}}
        base["nodes"][f"controller_{s}"] = c
    base["nodes"]["policy"]["params"].update(backend={"type": "checkpoint", "path": str(policy)}, delay_s=delay_s)
    cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"rs-bench-strategies-{os.getpid()}.yaml"
    cfg.write_text(yaml.safe_dump(base))
    out = {}
    rng = np.random.default_rng(7)
    cubes = [[rng.uniform(0.42, 0.58), rng.uniform(-0.18, 0.13), 0.02, 0, 0, 0, 1.0] for _ in range(episodes)]
    s = Session(cfg)
    try:
        s.start((RobotState.TOPIC, Heartbeat.topic("policy")))
        for strat in STRATEGIES:
            r = run_episodes(s, episodes, max_episode_s, cube_poses=cubes, console=console,
                             label=f"{strat} @ {delay_s * 1e3:.0f} ms", seed=11, controller=f"controller_{strat}")
            out[strat] = r
    finally:
        s.close()
        cfg.unlink(missing_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, required=True, help="trained checkpoint (.safetensors)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--episodes", type=int, default=None)
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console
    from rich.table import Table

    console = Console()
    delays = (0.0, 0.2) if args.quick else (0.0, 0.1, 0.2, 0.3)
    episodes = args.episodes or (2 if args.quick else 6)
    rows = []
    for d in delays:
        res = run_delay(args.policy.resolve(), d, episodes, 20.0, console)
        for strat, r in res.items():
            c = r.controller
            rows.append((d, strat, r.success_rate, np.mean(r.completion_s) if r.completion_s else float("nan"),
                         c.get("switch_jump_mean_mm", float("nan")), c.get("switch_jump_max_mm", float("nan")),
                         c.get("dropped_actions", 0.0), c.get("inference_p50_ms", float("nan"))))
    t = Table(title=f"strategies under injected inference delay ({episodes} episodes each, learned policy)")
    for h in ("delay", "strategy", "success", "completion s", "jump mean mm", "jump max mm", "jump mean / sync",
              "dropped", "inference p50 ms"):
        t.add_column(h, justify="right")
    for d, strat, sr, ct, jm, jx, dr, inf in rows:
        sync = next(r for r in rows if r[0] == d and r[1] == "sync")
        t.add_row(f"{d * 1e3:.0f} ms", strat, f"{100 * sr:.0f} %", f"{ct:.1f}", f"{jm:.1f}", f"{jx:.1f}",
                  f"{jm / sync[4]:.2f}" if sync[4] > 0 else "-", f"{dr:.0f}", f"{inf:.0f}")
    console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
