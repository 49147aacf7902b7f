"""Training speed per device: ``robot-stack train``'s loop on recorded episodes, CPU vs CUDA.

Trains the default model (``policies/generative.py: ModelConfig``) on the given episodes with
``policies.training.train`` (the same loop, batching and augmentation as ``robot-stack train``),
once on each device present: CUDA when torch sees a GPU, and the CPU with torch's default thread
count. Prints steps/s per device and the CUDA/CPU ratio from the same run; checkpoints go to a
temporary folder.

Run: ``python bench/training.py --episodes DIR`` (``--quick``: 20 CPU steps, 200 GPU steps). The
episodes come from ``robot-stack collect`` or ``robot-stack demo --workdir DIR`` (``DIR/episodes``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from robot_stack.data.dataset import list_episodes
from robot_stack.policies.generative import ModelConfig
from robot_stack.policies.training import TrainSettings, train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", required=True, type=Path, help="folder of recorded episodes")
    ap.add_argument("--cpu-steps", type=int, default=100)
    ap.add_argument("--cuda-steps", type=int, default=2500)
    ap.add_argument("--quick", action="store_true", help="20 CPU steps, 200 GPU steps")
    args = ap.parse_args()
    episodes = list_episodes(args.episodes)
    if len(episodes) < 2:
        print(f"need at least 2 episodes in {args.episodes}, found {len(episodes)}", file=sys.stderr)
        return 2
    steps = {"cpu": 20 if args.quick else args.cpu_steps, "cuda": 200 if args.quick else args.cuda_steps}
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for dev in devices:
            s = TrainSettings(
                model=ModelConfig(), steps=steps[dev], val_fraction=0.25, device=dev, checkpoint_every=10**6
            )
            out = train(s, episodes, Path(d) / f"policy_{dev}.safetensors", progress=False)
            res[dev] = out["steps"] / out["train_time_s"]
    print(f"\n{len(episodes)} episodes, default model, batch {TrainSettings().batch_size}")
    print(f"{'device':8s} {'steps':>6s} {'steps/s':>8s}")
    for dev in devices:
        name = torch.cuda.get_device_name(0) if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        print(f"{dev:8s} {steps[dev]:6d} {res[dev]:8.2f}  {name}")
    if "cuda" in res:
        print(f"cuda/cpu steps/s: {res['cuda'] / res['cpu']:.2f}x")
    else:
        print("no GPU seen by torch: CPU only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
