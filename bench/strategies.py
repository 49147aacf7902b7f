"""Execution strategies under inference delay on the sim: with the demo's learned policy, or with
the oracle (the task's expert from ground truth, ``policies/oracle.py``), which measures execution
apart from learning noise.

Learned (``--policy``): for each injected inference delay (0, 100, 200, 300 ms; the policy node
sleeps that long before each prediction) the stack is started once with one controller node per
variant; each runs the same randomized reach episodes in turn (same cube poses and start poses):

- ``sync``, ``async``, ``ensemble``: the demo's policy;
- ``rtc``: inference-time RTC (the demo's policy, guided toward the committed prefix);
- ``rtc_train``: training-time RTC (a checkpoint trained with clean prefixes, ``--rtc-policy``;
  ``robot-stack train configs/train/reach_rtc.yaml``), conditioned on the committed prefix.

Oracle (``--oracle``): the grid task (reach, pick) x control rate with its chunk (10 Hz / H 16,
15 Hz / H 10, 50 Hz / H 50; execution horizon H/2) x server latency (0, 100, 300 ms) x strategy
(sync, async, ensemble, rtc), 20 episodes a cell. Resumable: each finished cell is written to
``--results`` (JSON) at once and skipped when the command runs again, so the grid can be run over
several days (``--tasks``, ``--rates``, ``--delays-ms`` pick part of it).

Printed per cell: success over the episodes, completion time of the successes, the jump in
commanded position at chunk switches (mean / max) and its ratio to sync's in the same cell, the
commanded waypoint jerk at switches (mean / p99, m/s^3), dropped actions (stale on arrival) and
refused chunks (RTC: arrived later than the prefix they followed).

``python bench/strategies.py --policy P.safetensors --rtc-policy P_rtc.safetensors`` (10 episodes
each; ``--quick``: delays 0 and 200 ms, 2 episodes each);
``python bench/strategies.py --oracle --results strategies_oracle.json`` (``--quick``: reach at
50 Hz / H 50 and 0 / 200 ms, 2 episodes).
"""

from __future__ import annotations

import argparse
import json
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


#: oracle grid: control rate (Hz) -> prediction horizon H (execution horizon H / 2)
ORACLE_RATES = {10: 16, 15: 10, 50: 50}


def run_cell(
    task: str,
    policies: dict[str, dict],
    variants: dict[str, tuple[str, str]],
    delay_s: float,
    episodes: int,
    max_episode_s: float,
    console,
    ctl_params: dict | None = None,
    on_variant=None,
) -> dict:
    """One stack: the task's sim setup with ``policies`` (node name -> backend) behind ``delay_s``
    of injected inference and one controller per variant (name -> (strategy, policy node)), each
    running the same ``episodes`` (cube and start poses) in turn; variant -> DeployResult.
    ``on_variant(variant, result)``: called as each variant finishes (the grid keeps it at once)."""
    import yaml

    from robot_stack.apps.demo import config_path
    from robot_stack.apps.deploy import run_episodes
    from robot_stack.apps.session import Session

    from robot_stack.runtime.config import resolve_setup

    base, _ = resolve_setup(config_path("sim_panda_reach.yaml" if task == "reach" else "sim_panda_pick.yaml"))
    ctl = base["nodes"].pop("controller")
    pol_node = base["nodes"].pop("policy")
    for n in ("teleop", "recorder", "cam_scene"):
        base["nodes"].pop(n, None)
    ctl["params"].update(source="policy", teleop=None, autostart=False, **(ctl_params or {}))
    for v, (strategy, pol) in variants.items():
        base["nodes"][f"controller_{v}"] = {**ctl, "params": {**ctl["params"], "strategy": strategy, "policy": pol}}
    for name, backend in policies.items():
        base["nodes"][name] = {**pol_node, "params": {**pol_node["params"], "backend": backend, "delay_s": delay_s}}
    if not (ctl_params or {}).get("cameras", True):
        base["nodes"].pop("cam_wrist", None)  # nothing observes it
    cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"rs-bench-strategies-{os.getpid()}.yaml"
    cfg.write_text(yaml.safe_dump(base))
    out = {}
    rng = np.random.default_rng(7)
    cubes = [[rng.uniform(0.42, 0.58), rng.uniform(-0.18, 0.13), 0.02, 0, 0, 0, 1.0] for _ in range(episodes)]
    s = Session(cfg)
    try:
        s.start((RobotState.TOPIC, *(Heartbeat.topic(p) for p in policies)))
        for v in variants:
            out[v] = run_episodes(
                s,
                episodes,
                max_episode_s,
                cube_poses=cubes if task == "reach" else None,
                console=console,
                label=f"{v} @ {delay_s * 1e3:.0f} ms",
                seed=11,
                controller=f"controller_{v}",
            )
            if on_variant is not None:
                on_variant(v, out[v])
    finally:
        s.close()
        cfg.unlink(missing_ok=True)
    return out


def row(r, **cell) -> dict:
    """A cell's figures from its DeployResult."""
    from robot_stack.apps.failures import failure_counts

    c, nan = r.controller, float("nan")
    return dict(
        cell,
        ok=sum(r.success),
        n=len(r.success),
        completion=float(np.mean(r.completion_s)) if r.completion_s else nan,
        jump_mean=c.get("switch_jump_mean_mm", nan),
        jump_max=c.get("switch_jump_max_mm", nan),
        jerk_mean=c.get("switch_jerk_mean", nan),
        jerk_p99=c.get("switch_jerk_p99", nan),
        dropped=c.get("dropped_actions", 0.0),
        refused=c.get("refused_chunks", 0.0),
        inference=c.get("inference_p50_ms", nan),
        failures=dict(failure_counts(r.failures)),
    )


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k/n (Wilson 1927)."""
    if n == 0:
        return float("nan"), float("nan")
    p, d = k / n, 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def oracle_grid(args, console) -> list[dict]:
    """The oracle grid, cell by cell, kept in ``args.results`` as each finishes."""
    results = Path(args.results)
    done: dict[str, dict] = json.loads(results.read_text()) if results.is_file() else {}
    tasks = args.tasks or (["reach"] if args.quick else ["reach", "pick"])
    rates = args.rates or ([50] if args.quick else list(ORACLE_RATES))
    delays = [d / 1e3 for d in args.delays_ms] if args.delays_ms else ([0.0, 0.2] if args.quick else [0.0, 0.1, 0.3])
    episodes = args.episodes or (2 if args.quick else 20)
    variants = {v: (v, "oracle") for v in args.variants or ("sync", "async", "ensemble", "rtc")}
    for task in tasks:
        for rate in rates:
            H = ORACLE_RATES[rate]
            for d in delays:
                cell = f"oracle|{task}|{rate}|{H}|{d * 1e3:.0f}"
                todo = {v: sp for v, sp in variants.items() if f"{cell}|{v}|{episodes}" not in done}
                if not todo:
                    continue
                backend = {"type": "oracle", "task": task, "horizon": H, "dt": 1.0 / rate}

                def keep(v, r, task=task, rate=rate, H=H, d=d, cell=cell):
                    done[f"{cell}|{v}|{episodes}"] = row(r, task=task, rate=rate, H=H, delay=d, variant=v)
                    results.write_text(json.dumps(done, indent=1))  # kept as each variant's cell finishes

                run_cell(
                    task,
                    {"oracle": backend},
                    todo,
                    d,
                    episodes,
                    20.0 if task == "reach" else 30.0,
                    console,
                    dict(rate_hz=rate, execute_horizon=H // 2, cameras=[], obs_keys=["ee_pose"]),
                    on_variant=keep,
                )
    return [
        r
        for r in done.values()
        if r["task"] in tasks
        and r["rate"] in rates
        and r["variant"] in variants
        and any(abs(r["delay"] - d) < 1e-9 for d in delays)
        and r["n"] == episodes
    ]


def print_table(rows: list[dict], title: str, console, oracle: bool) -> None:
    from rich.table import Table

    t = Table(title=title)
    cols = (["task", "rate / H"] if oracle else []) + ["delay", "variant", "success", "95 % interval"]
    cols += ["completion s", "jump mean mm", "jump max mm", "jump / sync", "jerk mean m/s³", "jerk p99 m/s³"]
    cols += ["dropped", "refused", "inference p50 ms", "failures"]
    for h in cols:
        t.add_column(h, justify="right")
    for r in rows:
        same = [x for x in rows if x["delay"] == r["delay"] and x.get("task") == r.get("task")]
        sync = next((x for x in same if x["variant"] == "sync" and x.get("rate") == r.get("rate")), None)
        lo, hi = wilson(r["ok"], r["n"])
        ratio = f"{r['jump_mean'] / sync['jump_mean']:.2f}" if sync and sync["jump_mean"] > 0 else "-"
        t.add_row(
            *([r["task"], f"{r['rate']} Hz / {r['H']}"] if oracle else []),
            f"{r['delay'] * 1e3:.0f} ms",
            r["variant"],
            f"{r['ok']}/{r['n']}",
            f"{100 * lo:.0f}-{100 * hi:.0f} %",
            f"{r['completion']:.1f}",
            f"{r['jump_mean']:.1f}",
            f"{r['jump_max']:.1f}",
            ratio,
            f"{r['jerk_mean']:.1f}",
            f"{r['jerk_p99']:.1f}",
            f"{r['dropped']:.0f}",
            f"{r['refused']:.0f}",
            f"{r['inference']:.0f}",
            ", ".join(f"{k} {v}" for k, v in r.get("failures", {}).items()),
        )
    console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", type=Path, help="the demo's checkpoint (.safetensors)")
    src.add_argument("--oracle", action="store_true", help="the oracle grid (the task's expert from ground truth)")
    ap.add_argument(
        "--rtc-policy",
        type=Path,
        default=None,
        help="a checkpoint trained for training-time RTC (model.rtc_max_prefix > 0)",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--delays-ms", type=float, nargs="+", default=None)
    ap.add_argument("--tasks", nargs="+", choices=("reach", "pick"), default=None, help="oracle: tasks of the grid")
    ap.add_argument("--rates", type=int, nargs="+", choices=sorted(ORACLE_RATES), default=None, help="oracle: Hz")
    ap.add_argument("--results", default="strategies_oracle.json", help="oracle: the resumable results file")
    ap.add_argument(
        "--variants", nargs="+", choices=("sync", "async", "ensemble", "rtc"), default=None, help="oracle: strategies"
    )
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console

    console = Console(width=max(160, Console().width))  # the table is wide: never elide cells in a log file
    if args.oracle:
        rows = oracle_grid(args, console)
        n = rows[0]["n"] if rows else 0
        print_table(rows, f"strategies with the oracle policy ({n} episodes a cell; {args.results})", console, True)
        return 0
    for p in (args.policy, args.rtc_policy):
        if p is not None and not p.is_file():
            print(f"error: no checkpoint at {p}", file=sys.stderr)
            return 2
    delays = (
        tuple(d / 1e3 for d in args.delays_ms) if args.delays_ms else (0.0, 0.2) if args.quick else (0.0, 0.1, 0.2, 0.3)
    )
    episodes = args.episodes or (2 if args.quick else 10)
    policies = {"policy": {"type": "checkpoint", "path": str(args.policy.resolve())}}
    if args.rtc_policy is not None:
        policies["policy_rtc"] = {"type": "checkpoint", "path": str(args.rtc_policy.resolve())}
    variants = {v: sp for v, sp in VARIANTS.items() if args.rtc_policy is not None or v != "rtc_train"}
    rows = []
    for d in delays:
        res = run_cell("reach", policies, variants, d, episodes, 20.0, console)
        rows += [row(r, delay=d, variant=v) for v, r in res.items()]
    print_table(
        rows, f"strategies under injected inference delay ({episodes} episodes each, the demo's policy)", console, False
    )
    if args.rtc_policy is None:
        console.print("rtc_train not run: give --rtc-policy (robot-stack train configs/train/reach_rtc.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
