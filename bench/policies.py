"""The policy families on the pick-and-place task, one table from one run.

Rows (all H = 16 actions at 10 Hz, To = 2, trained on the same demonstrations):

- ``ddim16``: Diffusion Policy, DDIM 16 steps, wrist RGB (Chi et al. 2023);
- ``flow1``: flow matching sampled in one Euler step, wrist RGB (the demo's default);
- ``meanflow_points``: MP1 (arXiv 2507.10543): MeanFlow, one network evaluation, on the fixed
  scene camera's point cloud in the base frame (built with its calibrated ``T_base_camera``), with
  the dispersive loss;
- ``h3dp``: H3DP-style input (arXiv 2505.07819): the wrist RGB-D image cut into depth layers,
  multi-scale features, coarse-to-fine conditioning; DDIM 16 steps;
- ``slowfast``: RDP-style slow-fast control reacts to the wrist force, which pick-and-place barely
  loads; it is measured on the press task, a contact task, by ``bench/slowfast.py`` against the
  slow policy alone, and its row here points there.

Columns: success over the evaluation episodes (sim ground truth, cube poses from a seed the
demonstrations never saw), completion time of the successes, inference ms p50/p99 per chunk on
torch and ONNX Runtime (the policy alone, on the CPU unless ``--device cuda``; measured in the same
run), and training time to the evaluated checkpoint.

Run: ``python bench/policies.py`` (collects ``--demos`` pick demonstrations, or reuses
``--episodes DIR``); ``--quick`` proves every row's path in a few minutes (CI: 4 demonstrations,
40 training steps, 1 evaluation episode: the success column means nothing there);
``--rows flow1,ddim16`` picks rows; ``--device cuda`` times inference on a GPU.
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

ROWS = {
    "ddim16": dict(model=dict(kind="ddim", sample_steps=16), label="Diffusion Policy, DDIM 16 steps, wrist RGB"),
    "flow1": dict(model=dict(kind="flow", sample_steps=1), label="flow matching, 1 step, wrist RGB"),
    # To = 1: the scene camera renders at about 4 Hz beside the rest of the sim stack on 2 cores,
    # too sparse for a 2-step window at 10 Hz (a frame within 50 ms of each window time)
    "meanflow_points": dict(
        model=dict(
            kind="meanflow",
            sample_steps=1,
            cameras={"scene": "points"},
            n_points=512,
            dispersive_weight=0.1,
            obs_horizon=1,
        ),
        cameras=["cam_scene"],
        label="MP1: MeanFlow 1 step, scene point cloud",
    ),
    "h3dp": dict(
        model=dict(kind="ddim", sample_steps=16, cameras={"wrist": "layered"}, depth_layers=(0.0, 0.3, 0.45, 2.0)),
        label="H3DP: depth layers of wrist RGB-D, DDIM 16 steps",
    ),
    "slowfast": dict(model=None, label="RDP-style slow-fast", note="contact task: bench/slowfast.py"),
}


def time_inference(model, onnx_path: Path, n: int, device: str) -> dict[str, np.ndarray]:
    """ms per chunk (``predict`` of one observation window, random content of the spec's shapes)
    on torch and on ONNX Runtime."""
    from robot_stack.policies.generative import GenerativePolicy, OnnxDenoiser, TorchDenoiser

    gpu = device.startswith("cuda")
    backends = {
        "torch": TorchDenoiser(model, device=device),
        "onnx": OnnxDenoiser(
            onnx_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        ),
    }
    rng = np.random.default_rng(0)
    out = {}
    for name, b in backends.items():
        pol = GenerativePolicy(model, b, seed=0)
        md = pol.metadata

        def window(md=md):
            o = {}
            for k, (shape, dt) in md.obs_shapes.items():
                shp = (md.obs_horizon, *shape)
                o[k] = (
                    rng.integers(0, 255, shp).astype(dt)
                    if np.dtype(dt).kind in "ui"
                    else rng.uniform(0, 0.5, shp).astype(dt)
                )
            return o

        for _ in range(3):
            pol.predict(window())
        t = []
        for _ in range(n):
            w = window()
            t0 = time.perf_counter()
            pol.predict(w)
            t.append((time.perf_counter() - t0) * 1e3)
        out[name] = np.array(t)
    return out


def run_row(name: str, spec: dict, episodes: list[Path], work: Path, args, config: Path) -> dict:
    """Train, time and deploy one row; returns its figures."""
    from robot_stack.apps.deploy import deploy_session, run_episodes
    from robot_stack.comm.messages import Heartbeat, RobotState
    from robot_stack.policies.generative import export_onnx, load_checkpoint
    from robot_stack.policies.generative import ModelConfig
    from robot_stack.policies.training import TrainSettings, train

    out = {"row": name, "label": spec["label"]}
    if spec["model"] is None:
        out["note"] = spec["note"]
        return out
    ms = ModelConfig(**spec["model"])
    ts = TrainSettings(
        model=ms,
        steps=args.steps,
        val_fraction=0.1 if len(episodes) >= 10 else 0.25,
        checkpoint_every=max(1, args.steps),
    )
    path = work / f"{name}.safetensors"
    t0 = time.perf_counter()
    summary = train(ts, episodes, path, progress=not args.quick)
    out["train_s"] = time.perf_counter() - t0
    out["val_pos_err_mm"] = summary.get("val_pos_err_mm")
    model, _ = load_checkpoint(path)
    onnx = export_onnx(model.eval(), work / f"{name}.onnx")
    t = time_inference(model, onnx, 10 if args.quick else 100, args.device)
    for k, v in t.items():
        out[f"{k}_p50_ms"], out[f"{k}_p99_ms"] = float(np.percentile(v, 50)), float(np.percentile(v, 99))
    # the observation (keys, To, image size) from the policy's spec; the cameras the row observes
    sets = {
        "nodes.controller.params.obs_keys": None,
        "nodes.controller.params.obs_horizon": None,
        "nodes.controller.params.image_size": None,
    }
    if "cameras" in spec:
        sets["nodes.controller.params.cameras"] = spec["cameras"]
    session, pol = deploy_session(config, path, seed=1000, sets=sets)
    try:
        session.start((RobotState.TOPIC, Heartbeat.topic(pol)))
        res = run_episodes(session, args.eval, args.max_episode_s, seed=1000, label=name)
    finally:
        session.close()
    out["success"], out["episodes"] = int(sum(res.success)), len(res.success)
    out["completion_s"] = float(np.mean(res.completion_s)) if res.completion_s else None
    out["final_err_mm"] = float(np.median(res.final_xy_err_mm))
    out["assembly_p50_ms"] = res.controller.get("stage_assembly_p50_ms")
    out["deploy_inference_p50_ms"] = res.policy.get("inference_p50_ms")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="prove every row's path (CI)")
    ap.add_argument("--episodes", type=Path, default=None, help="pick demonstrations to reuse (default: collect)")
    ap.add_argument("--demos", type=int, default=None, help="demonstrations to collect (default 50; quick 4)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per row (default 3000; quick 40)")
    ap.add_argument("--eval", type=int, default=None, help="evaluation episodes per row (default 20; quick 1)")
    ap.add_argument("--max-episode-s", type=float, default=25.0)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    ap.add_argument("--device", default="cpu", help="inference timing device (cpu, cuda)")
    ap.add_argument("--work", type=Path, default=None, help="folder for episodes, checkpoints and results.json")
    ap.add_argument("--one-row", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process
    args = ap.parse_args()
    args.demos = args.demos or (4 if args.quick else 50)
    args.steps = args.steps or (40 if args.quick else 3000)
    args.eval = args.eval or (1 if args.quick else 20)
    if args.quick:
        args.max_episode_s = min(args.max_episode_s, 6.0)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"unknown rows {bad}: choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: torch sees no GPU on this machine", file=sys.stderr)
            return 2

    from rich.console import Console
    from rich.table import Table

    from robot_stack.apps.collect import run_collect
    from robot_stack.apps.demo import config_path, expert_successes
    from robot_stack.tasks import PickTask
    from robot_stack.data.dataset import list_episodes

    console = Console(width=max(Console().width, 150))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-policies-"))
    work.mkdir(parents=True, exist_ok=True)
    config = config_path("sim_panda_pick.yaml")
    if args.one_row:
        out = run_row(args.one_row, ROWS[args.one_row], list_episodes(args.episodes), work, args, config)
        (work / f"{args.one_row}.json").write_text(json.dumps(out))
        return 0
    if args.episodes is not None:
        episodes = list_episodes(args.episodes)
        expert = (expert_successes(episodes, PickTask()), len(episodes))
    else:
        col = run_collect(config, work / "episodes", args.demos, max_episode_s=25.0, seed=1, console=console)
        episodes = col.saved
        expert = (expert_successes(episodes, PickTask()), len(col.saved) + col.discarded)
    results = []
    for r in rows:  # each row in its own process: one row's threads and sockets never meet the next's
        console.rule(f"{r}: {ROWS[r]['label']}")
        cmd = [
            sys.executable,
            __file__,
            "--one-row",
            r,
            "--episodes",
            str(episodes[0].parent),
            "--work",
            str(work),
            "--steps",
            str(args.steps),
            "--eval",
            str(args.eval),
            "--max-episode-s",
            str(args.max_episode_s),
            "--device",
            args.device,
        ] + (["--quick"] if args.quick else [])
        rc = subprocess.run(cmd).returncode
        f = work / f"{r}.json"
        if rc != 0 or not f.exists():
            console.print(f"[red]row {r} failed (exit {rc})[/red]")
            return 1
        results.append(json.loads(f.read_text()))
        (work / "results.json").write_text(json.dumps({"expert": expert, "rows": results}, indent=1))

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    t = Table(
        title=f"pick-and-place: {len(episodes)} demonstrations, {args.steps} training steps per policy, "
        f"{args.eval} evaluation episodes; inference on {args.device} (expert {expert[0]}/{expert[1]})"
    )
    for c in (
        "policy",
        "success",
        "completion s",
        "torch p50 / p99 ms",
        "ONNX RT p50 / p99 ms",
        "train s",
        "obs build p50 ms",
    ):
        t.add_column(c, justify="left" if c == "policy" else "right")
    for o in results:
        if "note" in o:
            t.add_row(o["label"], o["note"], "-", "-", "-", "-", "-")
            continue
        t.add_row(
            o["label"],
            f"{o['success']}/{o['episodes']}",
            f(o["completion_s"], ".1f"),
            f"{o['torch_p50_ms']:.1f} / {o['torch_p99_ms']:.1f}",
            f"{o['onnx_p50_ms']:.1f} / {o['onnx_p99_ms']:.1f}",
            f"{o['train_s']:.0f}",
            f(o["assembly_p50_ms"], ".1f"),
        )
    console.print(t)
    by = {o["row"]: o for o in results}
    if "meanflow_points" in by and "ddim16" in by:
        m, d = by["meanflow_points"], by["ddim16"]
        console.print(
            f"MeanFlow (points) / DDIM-16 inference time, torch p50: {m['torch_p50_ms'] / d['torch_p50_ms']:.2f}x; "
            f"success {m['success']}/{m['episodes']} against {d['success']}/{d['episodes']}"
        )
    console.print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
