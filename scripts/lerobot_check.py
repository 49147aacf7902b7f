"""Load one of our LeRobot v3.0 exports with lerobot's own ``LeRobotDataset`` and compare.

Runs inside ``.venv-lerobot`` (``scripts/setup_lerobot.sh``), never in the project's environment:
lerobot 0.4.4 pins torch < 2.11 and torchvision < 0.26, so it is installed without its pins beside
the project's CPU torch (see that script). Prints one JSON object:

- ``frames``: lerobot's frame count, ``rows``: the parquet's;
- ``state_equal`` / ``action_equal`` / ``timestamp_equal``: every frame's values from lerobot's
  ``__getitem__`` equal the parquet row bit for bit;
- ``tasks``: the task string lerobot returns per episode;
- ``video_frames``: per camera, frames lerobot decoded (one per item) and their shape;
- ``stats_max_abs_diff``: per feature and statistic, the largest difference between our
  ``meta/stats.json`` and lerobot's ``compute_episode_stats`` + ``aggregate_stats`` over the same
  frames; ``stats_max_rel_diff``: the same relative to each dimension's scale, the larger of its
  range and magnitude (lerobot's own precision: float32 sums, quantiles from a 5000-bin histogram
  over the range) (images: lerobot's own sampling and statistics of the decoded frames, as float: see
  ``image_std_uint8_bug``, lerobot's own std of uint8 samples, which overflows).

Usage: .venv-lerobot/bin/python scripts/lerobot_check.py DATASET_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(root: Path) -> dict:
    import pyarrow.parquet as pq
    import torch
    from lerobot.datasets.compute_stats import (
        DEFAULT_QUANTILES,
        aggregate_stats,
        auto_downsample_height_width,
        compute_episode_stats,
        get_feature_stats,
        sample_indices,
    )
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/robot_stack_export", root=root, video_backend="torchcodec")
    table = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    action = np.stack(table.column("action").to_numpy(zero_copy_only=False))
    ts = np.asarray(table.column("timestamp"), np.float32)
    cams = [k for k, f in ds.meta.features.items() if f["dtype"] == "video"]
    out = {
        "frames": len(ds),
        "rows": table.num_rows,
        "state_equal": True,
        "action_equal": True,
        "timestamp_equal": True,
        "tasks": {},
        "video_frames": {c: 0 for c in cams},
        "video_shape": {},
    }
    per_episode: dict[int, dict[str, list]] = {}
    for i in range(len(ds)):
        item = ds[i]
        out["state_equal"] &= bool(np.array_equal(item["observation.state"].numpy(), state[i]))
        out["action_equal"] &= bool(np.array_equal(item["action"].numpy(), action[i]))
        out["timestamp_equal"] &= bool(np.float32(item["timestamp"].item()) == ts[i])
        e = int(item["episode_index"])
        out["tasks"][e] = item["task"]
        ep = per_episode.setdefault(e, {k: [] for k in ["observation.state", "action", *cams]})
        ep["observation.state"].append(item["observation.state"].numpy())
        ep["action"].append(item["action"].numpy())
        for c in cams:
            img = item[c]
            if isinstance(img, torch.Tensor) and img.ndim == 3:
                out["video_frames"][c] += 1
                out["video_shape"][c] = list(img.shape)
                ep[c].append((img.numpy() * 255).round().astype(np.uint8))  # CHW float [0, 1] -> uint8
    # lerobot's statistics of the same frames, as its writer computes them per episode
    features = {k: ds.meta.features[k] for k in ["observation.state", "action"]}
    ep_stats = []
    for _, d in sorted(per_episode.items()):
        st = compute_episode_stats({k: np.stack(d[k]) for k in features}, features)
        for c in cams:  # compute_episode_stats samples image *files*; the same steps on the decoded frames
            frames = np.stack(d[c])  # (n, 3, h, w) uint8
            arr = np.stack([auto_downsample_height_width(frames[i]) for i in sample_indices(len(frames))])
            # lerobot 0.4.4 feeds uint8 samples to RunningQuantileStats, whose mean of squares
            # (batch**2) wraps around in uint8, so its image std is wrong; computed here on the same
            # samples as float (the uint8 result is reported beside it)
            fs = get_feature_stats(
                arr.astype(np.float64), axis=(0, 2, 3), keepdims=True, quantile_list=DEFAULT_QUANTILES
            )
            st[c] = {k: v if k == "count" else np.squeeze(v / 255.0, axis=0) for k, v in fs.items()}
            u8 = get_feature_stats(arr, axis=(0, 2, 3), keepdims=True, quantile_list=DEFAULT_QUANTILES)
            out.setdefault("image_std_uint8_bug", {}).setdefault(c, []).append(
                float(np.squeeze(u8["std"] / 255.0).mean())
            )
        ep_stats.append(st)
    theirs = aggregate_stats(ep_stats)
    ours = json.loads((root / "meta" / "stats.json").read_text())
    diff, rel = {}, {}
    for k, st in theirs.items():
        # lerobot's own precision is relative to the feature's range: float32 sums (std) and a
        # 5000-bin histogram (quantiles) over [min, max]
        # (float32 sums err relative to the magnitude: a constant dimension's std in float32 is
        # sqrt(E[x^2] - E[x]^2), up to ~3e-4 of |x| where ours is 0)
        lo, hi = np.asarray(st["min"], np.float64), np.asarray(st["max"], np.float64)
        span = np.maximum(np.maximum(hi - lo, np.maximum(np.abs(lo), np.abs(hi))), 1e-6)
        for s, v in st.items():
            if s in ours.get(k, {}):
                d = np.abs(np.asarray(ours[k][s], np.float64).reshape(np.shape(v)) - np.asarray(v, np.float64))
                diff[f"{k}/{s}"] = float(np.max(d))
                rel[f"{k}/{s}"] = float(np.max(d / span)) if s != "count" else float(np.max(d))
            else:
                diff[f"{k}/{s}"] = rel[f"{k}/{s}"] = None  # a statistic lerobot computes that we do not write
    out["stats_max_abs_diff"] = diff
    out["stats_max_rel_diff"] = rel  # per dimension, relative to max(range, |min|, |max|) (count: absolute)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: lerobot_check.py DATASET_DIR")
    print(json.dumps(main(Path(sys.argv[1]))))
