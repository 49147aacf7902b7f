"""``robot-stack demo``: the main job on the simulated robot."""

from __future__ import annotations

from pathlib import Path


def config_path(name: str) -> Path:
    """Path of a shipped config in ``configs/`` (repository checkout)."""
    p = Path(__file__).resolve().parents[1] / "configs" / name
    if not p.is_file():
        raise FileNotFoundError(f"config {name} not found at {p}")
    return p


def run_demo(quick: bool = False) -> int:
    """Bring up the synthetic stack and show data flowing between processes."""
    from .launcher import up

    return up(config_path("synthetic.yaml"), duration_s=3.0 if quick else 6.0)
