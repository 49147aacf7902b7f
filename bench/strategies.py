"""Execution strategies under inference delay, with the demo's learned policy on the sim (issue 17).

For each injected inference delay (0, 100, 200, 300 ms; the policy node sleeps that long before
each prediction) the stack is started once with one controller node per variant; each runs the
same randomized reach episodes in turn (same cube poses and start poses for every variant):

- ``sync``, ``async``, ``ensemble``: the demo's policy;
- ``rtc``: inference-time RTC (the demo's policy, guided toward the committed prefix);
- ``rtc_train``: training-time RTC (a checkpoint trained with clean prefixes, ``--rtc-policy``;
  ``robot-stack train configs/train/reach_rtc.yaml``), conditioned on the committed prefix.

Printed per (delay, variant): success over the episodes, completion time of the successes, the
jump in commanded position at chunk switches (mean / max) and its ratio to sync's in the same run,
the commanded waypoint jerk at switches (mean / p99, m/s^3), dropped actions (stale on arrival)
and refused chunks (RTC: arrived later than the prefix they followed).

``python bench/strategies.py --policy P.safetensors --rtc-policy P_rtc.safetensors`` (10 episodes
each; ``--quick``: delays 0 and 200 ms, 2 episodes each).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robot_stack.comm.messages import Heartbeat, RobotState  # noqa: E402

#: variant -> (strategy, policy node)
VARIANTS = {
    "sync": ("sync", "policy"),
    "async": ("async", "policy"),
    "ensemble": ("ensemble", "policy"),
    "rtc": ("rtc", "policy"),
    "rtc_train": ("rtc", "policy_rtc"),
}


def run_delay(
    policy: Path, rtc_policy: Path | None, delay_s: float, episodes: int, max_episode_s: float, console
) -> dict:
    import yaml

    from robot_stack.apps.demo import config_path
    from robot_stack.apps.deploy import run_episodes
    from robot_stack.apps.session import Session

    from robot_stack.runtime.config import resolve_setup

    base, _ = resolve_setup(config_path("sim_panda_reach.yaml"))
    ctl = base["nodes"].pop("controller")
    for n in ("teleop", "recorder", "cam_scene"):
        base["nodes"].pop(n)
    ctl["params"].update(source="policy", teleop=None, autostart=False)
    variants = {v: sp for v, sp in VARIANTS.items() if rtc_policy is not None or v != "rtc_train"}
    for v, (strategy, pol) in variants.items():
        base["nodes"][f"controller_{v}"] = {**ctl, "params": {**ctl["params"], "strategy": strategy, "policy": pol}}
    base["nodes"]["policy"]["params"].update(backend={"type": "checkpoint", "path": str(policy)}, delay_s=delay_s)
    if rtc_policy is not None:
        base["nodes"]["policy_rtc"] = {
            **base["nodes"]["policy"],
            "params": {**base["nodes"]["policy"]["params"], "backend": {"type": "checkpoint", "path": str(rtc_policy)}},
        }
    cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"rs-bench-strategies-{os.getpid()}.yaml"
    cfg.write_text(yaml.safe_dump(base))
    out = {}
    rng = np.random.default_rng(7)
    cubes = [[rng.uniform(0.42, 0.58), rng.uniform(-0.18, 0.13), 0.02, 0, 0, 0, 1.0] for _ in range(episodes)]
    s = Session(cfg)
    try:
        s.start((RobotState.TOPIC, Heartbeat.topic("policy")))
        for v in variants:
            out[v] = run_episodes(
                s,
                episodes,
                max_episode_s,
                cube_poses=cubes,
                console=console,
                label=f"{v} @ {delay_s * 1e3:.0f} ms",
                seed=11,
                controller=f"controller_{v}",
            )
    finally:
        s.close()
        cfg.unlink(missing_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, required=True, help="the demo's checkpoint (.safetensors)")
    ap.add_argument(
        "--rtc-policy",
        type=Path,
        default=None,
        help="a checkpoint trained for training-time RTC (model.rtc_max_prefix > 0)",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--delays-ms", type=float, nargs="+", default=None)
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))  # the table is wide: never elide cells in a log file
    for p in (args.policy, args.rtc_policy):
        if p is not None and not p.is_file():
            print(f"error: no checkpoint at {p}", file=sys.stderr)
            return 2
    delays = (
        tuple(d / 1e3 for d in args.delays_ms) if args.delays_ms else (0.0, 0.2) if args.quick else (0.0, 0.1, 0.2, 0.3)
    )
    episodes = args.episodes or (2 if args.quick else 10)
    rows = []
    nan = float("nan")
    for d in delays:
        res = run_delay(
            args.policy.resolve(), args.rtc_policy.resolve() if args.rtc_policy else None, d, episodes, 20.0, console
        )
        for v, r in res.items():
            c = r.controller
            rows.append(
                dict(
                    delay=d,
                    variant=v,
                    ok=sum(r.success),
                    n=len(r.success),
                    completion=np.mean(r.completion_s) if r.completion_s else nan,
                    jump_mean=c.get("switch_jump_mean_mm", nan),
                    jump_max=c.get("switch_jump_max_mm", nan),
                    jerk_mean=c.get("switch_jerk_mean", nan),
                    jerk_p99=c.get("switch_jerk_p99", nan),
                    dropped=c.get("dropped_actions", 0.0),
                    refused=c.get("refused_chunks", 0.0),
                    inference=c.get("inference_p50_ms", nan),
                )
            )
    t = Table(title=f"strategies under injected inference delay ({episodes} episodes each, the demo's policy)")
    for h in (
        "delay",
        "variant",
        "success",
        "completion s",
        "jump mean mm",
        "jump max mm",
        "jump / sync",
        "jerk mean m/s³",
        "jerk p99 m/s³",
        "dropped",
        "refused",
        "inference p50 ms",
    ):
        t.add_column(h, justify="right")
    for r in rows:
        sync = next(x for x in rows if x["delay"] == r["delay"] and x["variant"] == "sync")
        t.add_row(
            f"{r['delay'] * 1e3:.0f} ms",
            r["variant"],
            f"{r['ok']}/{r['n']}",
            f"{r['completion']:.1f}",
            f"{r['jump_mean']:.1f}",
            f"{r['jump_max']:.1f}",
            f"{r['jump_mean'] / sync['jump_mean']:.2f}" if sync["jump_mean"] > 0 else "-",
            f"{r['jerk_mean']:.1f}",
            f"{r['jerk_p99']:.1f}",
            f"{r['dropped']:.0f}",
            f"{r['refused']:.0f}",
            f"{r['inference']:.0f}",
        )
    console.print(t)
    if args.rtc_policy is None:
        console.print("rtc_train not run: give --rtc-policy (robot-stack train configs/train/reach_rtc.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
