"""Our LeRobot v3.0 export, loaded by lerobot's own LeRobotDataset (lerobot 0.4.4 in .venv-lerobot,
made by scripts/setup_lerobot.sh; .ci/run makes it), compared frame by frame."""

import json
import subprocess

import numpy as np
import pytest

from robot_stack.data.lerobot import export_lerobot

from conftest import REPO
from test_training import make_episode

VENV_PY = REPO / ".venv-lerobot" / "bin" / "python"

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(
        not VENV_PY.exists(),
        reason="lerobot is not installed: run scripts/setup_lerobot.sh "
        "(lerobot 0.4.4 in its own virtual environment .venv-lerobot)",
    ),
]


def lerobot_check(dataset) -> dict:
    """scripts/lerobot_check.py on an export, in .venv-lerobot: its JSON result."""
    r = subprocess.run(
        [str(VENV_PY), str(REPO / "scripts" / "lerobot_check.py"), str(dataset)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=dataset.parent,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


#: lerobot's own precision, relative to each dimension's scale (the larger of its range and its
#: magnitude): its std sums in float32, its quantiles come from a 5000-bin histogram over [min, max]
#: (a bin is 2e-4 of the range)
STATS_REL_TOL = 1e-3
#: std alone: lerobot computes it as sqrt(E[x^2] - E[x]^2) in float32, whose rounding (eps 1.2e-7 of
#: E[x^2]) leaves up to sqrt(k eps) |x| for a nearly constant dimension (a held quaternion
#: component: 8.3e-4 of |x| seen on recorded episodes), so its bound is that square root, not eps
STD_REL_TOL = 2e-3


def assert_state_action_stats_agree(res: dict) -> None:
    """Our meta/stats.json against lerobot's statistics of the same frames, for state and action:
    every statistic within lerobot's precision of the dimension's scale, the counts equal."""
    d = res["stats_max_rel_diff"]
    missing = sorted(k for k, v in d.items() if v is None)
    assert not missing, f"statistics lerobot computes that the export lacks: {missing}"
    for feat in ("observation.state", "action"):
        assert d[f"{feat}/count"] == 0, feat
        for s in ("min", "max", "mean", "std", "q01", "q10", "q50", "q90", "q99"):
            assert d[f"{feat}/{s}"] < (STD_REL_TOL if s == "std" else STATS_REL_TOL), (feat, s, d[f"{feat}/{s}"])


def test_lerobot_loads_our_export(tmp_path, report):
    tasks = ["reach the cube", "push the cube", "reach the cube"]
    eps = [make_episode(tmp_path / "native", seed=i, task=t, smooth=True) for i, t in enumerate(tasks)]
    out = export_lerobot(eps, tmp_path / "lr", fps=10)
    res = lerobot_check(out)
    assert res["frames"] == res["rows"] == 60
    assert res["state_equal"] and res["action_equal"] and res["timestamp_equal"]
    assert res["tasks"] == {str(i): t for i, t in enumerate(tasks)}  # strings, each episode its own
    assert res["video_frames"] == {"observation.images.wrist": 60}
    assert res["video_shape"] == {"observation.images.wrist": [3, 48, 64]}
    assert_state_action_stats_agree(res)
    d = res["stats_max_abs_diff"]
    # images: ours from the source frames, lerobot's from the decoded H.264 video (smooth frames:
    # the codec keeps them within a few levels)
    img = {s: d[f"observation.images.wrist/{s}"] for s in ("min", "max", "mean", "std", "q01", "q50", "q99")}
    assert max(img[s] for s in ("mean", "std", "q50")) < 0.01, img
    assert max(img[s] for s in ("q01", "q99")) < 0.03, img
    assert max(img[s] for s in ("min", "max")) < 0.1, img  # single pixels: yuv420 chroma at the extremes
    report(
        f"lerobot 0.4.4 LeRobotDataset on our export: 60/60 frames, state/action/timestamp bit-equal, "
        f"stats diff state {max(d[f'observation.state/{s}'] for s in ('min', 'max', 'mean', 'std')):.1e}, "
        f"image mean {img['mean']:.4f}, std {img['std']:.4f} (lerobot's own uint8 std, which wraps: "
        f"{np.mean(res['image_std_uint8_bug']['observation.images.wrist']):.3f})"
    )
