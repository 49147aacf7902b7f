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
from typing import Any

import yaml


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
    return {cam: int(round(float(v["latency_s"]) * 1e9))
            for cam, v in (data.get("cameras") or {}).items() if isinstance(v, dict) and "latency_s" in v}
