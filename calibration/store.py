"""The setup's calibration file (YAML): per-camera extrinsics, intrinsics check, latency.

Layout::

    cameras:
      wrist:
        T_gripper_camera: 4x4 nested list      # eye-in-hand
        hand_eye: {residual_rms_mm: ..., residual_rms_deg: ..., n_poses: ..., date: ...}
      scene:
        T_base_camera: 4x4 nested list         # eye-to-hand
        latency_s: 0.081                       # capture-stamp correction used by the controller
    robot:
      latency:
        command_latency_s: 0.012

Writes are atomic (temp file + rename): a crash never leaves a half-written calibration.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import numpy as np


def load(path: str | Path) -> dict[str, Any]:
    """The calibration mapping ({} if the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return {}
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: calibration file must hold a mapping")
    return data


def update(path: str | Path, section: str, key: str, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into ``data[section][key]`` and write the file atomically; returns the data."""
    p = Path(path)
    data = load(p)
    data.setdefault(section, {}).setdefault(key, {}).update(values)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, p)
    return data


def latency_offsets_ns(path: str | Path) -> dict[str, int]:
    """Per-stream latency offsets for observation assembly: camera id -> ns (from ``latency_s``)."""
    data = load(path)
    return {
        cam: int(round(float(v["latency_s"]) * 1e9))
        for cam, v in (data.get("cameras") or {}).items()
        if isinstance(v, dict) and "latency_s" in v
    }


def base_camera_extrinsics(path: str | Path) -> dict[str, np.ndarray]:
    """Fixed cameras' extrinsics: camera id -> ``T_base_camera`` (4, 4) float64 (eye-to-hand
    calibration; maps camera-frame points, OpenCV axes, into the base frame, m).

    Raises:
        ValueError: an entry that is not a 4x4 rigid transform.
    """
    import numpy as np

    out = {}
    for cam, v in (load(path).get("cameras") or {}).items():
        if not isinstance(v, dict) or "T_base_camera" not in v:
            continue
        T = np.asarray(v["T_base_camera"], float)
        if (
            T.shape != (4, 4)
            or not np.allclose(T[3], [0, 0, 0, 1])
            or not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-4)
        ):
            raise ValueError(f"{path}: cameras.{cam}.T_base_camera is not a 4x4 rigid transform")
        out[cam] = T
    return out
