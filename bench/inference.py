"""Inference latency per action chunk: Diffusion Policy (DDIM) and flow matching, torch vs ONNX Runtime.

Models are untrained (latency does not depend on the weights) at the default deployment size: one
RGB-D camera at 96x96, To = 2, H = 16, action_dim = 8. For each model and backend: latency p50/p99
per chunk (encoder once + the sampler's denoiser steps), and the ratio ONNX/torch measured in the
same run. CUDA is used when torch / onnxruntime see a GPU.

Run: ``python bench/inference.py`` (``--quick``: fewer chunks; ``--device cuda`` on a GPU, with
``--compile reduce-overhead`` for CUDA graphs; ``--batch B`` for B windows per request).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from robot_stack.policies.generative import (
    GenerativePolicy,
    GenerativePolicyModel,
    ModelConfig,
    OnnxDenoiser,
    TorchDenoiser,
    export_onnx,
)

MODELS = {
    "diffusion (DDIM 10 steps)": dict(kind="ddim", sample_steps=10),
    "flow (1 step)": dict(kind="flow", sample_steps=1),
    "flow (4 steps)": dict(kind="flow", sample_steps=4),
}


def obs(rng):
    return {
        "scene.color": rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8),
        "scene.depth": rng.integers(300, 1500, (2, 96, 96), dtype=np.uint16),
        "state": rng.standard_normal((2, 8)).astype(np.float32),
    }


def time_policy(policy, n: int, batch: int = 1) -> np.ndarray:
    """ms per request of ``batch`` windows (one predict, or one predict_batch), ``n`` requests."""
    rng = np.random.default_rng(0)

    def run(os_):
        return policy.predict(os_[0]) if batch == 1 else policy.predict_batch(os_)

    for _ in range(3):  # warm-up (and, with --compile, the compilation)
        run([obs(rng) for _ in range(batch)])
    out = []
    for _ in range(n):
        o = [obs(rng) for _ in range(batch)]
        t0 = time.perf_counter()
        run(o)
        out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--device",
        default=None,
        help="torch device (cpu, cuda; default: cuda when present); "
        "ONNX Runtime then asks for TensorRT and CUDA on cuda, CPU on cpu",
    )
    ap.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode of the torch rows (reduce-overhead: CUDA graphs on a GPU)",
    )
    ap.add_argument("--batch", type=int, default=1, help="observation windows per chunk request (predict_batch)")
    args = ap.parse_args()
    n = 10 if args.quick else 50
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, kw in MODELS.items():
            cfg = ModelConfig(
                cameras={"scene": "rgbd"}, image_hw=(96, 96), proprio_dim=8, horizon=16, action_dim=8, **kw
            )
            m = GenerativePolicyModel(cfg).eval()
            path = export_onnx(m, f"{d}/{kw['kind']}{kw['sample_steps']}.onnx")
            tb = TorchDenoiser(m, device=args.device, compile=args.compile)
            gpu = tb.device.startswith("cuda")
            ob = OnnxDenoiser(
                path,
                providers=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
                if gpu
                else ["CPUExecutionProvider"],
            )
            if ob.fallback:
                print(ob.fallback)
            t_torch = time_policy(GenerativePolicy(m, tb, seed=0), n, args.batch)
            t_onnx = time_policy(GenerativePolicy(m, ob, seed=0), n, args.batch)
            rows.append((name, tb.device, ob.providers[0], t_torch, t_onnx))
    print(
        f"\nlatency per action chunk request (H=16, one RGB-D camera 96x96, To=2, batch {args.batch}, "
        f"torch compile {args.compile}), {n} requests each, ms\n"
    )
    print(
        f"{'model':28s} {'torch dev':>9s} {'p50':>8s} {'p99':>8s} {'onnx provider':>22s} {'p50':>8s} {'p99':>8s} {'onnx/torch p50':>15s}"
    )
    for name, dev, prov, a, b in rows:
        print(
            f"{name:28s} {dev:>9s} {np.percentile(a, 50):8.2f} {np.percentile(a, 99):8.2f} {prov:>22s} "
            f"{np.percentile(b, 50):8.2f} {np.percentile(b, 99):8.2f} {np.percentile(b, 50) / np.percentile(a, 50):15.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
