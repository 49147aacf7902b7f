"""Setups for tests and benches, built as data (never YAML by string formatting).

A setup is the mapping a YAML config holds; build it with :func:`setup` and :func:`node`, validate it
in-process with :func:`robot_stack.runtime.config.config_from_dict`, or write it for the launcher with
:func:`write_setup`::

    cfg = setup("hil", run_dir,
                sim=node("sim_world", rate_hz=500),
                arm=node("arm", safety={"heartbeat_timeout_s": 1.0}),
                cam=node("camera", driver={"type": "sim", "camera": "scene"}, camera_id="scene"))
    write_setup(tmp_path / "hil.yaml", cfg)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: keys of a node's entry that are not params (``NodeConfig``)
NODE_KEYS = ("critical", "nice", "env", "heartbeat_hz", "pub_endpoint", "in_endpoint", "curve_server", "curve_client")


def node(kind: str, node_keys: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    """One node's entry: ``{kind, params}``, plus node-level keys (``critical``, ``nice``, ``env``,
    endpoints, CURVE settings) given in ``node_keys``."""
    out: dict[str, Any] = {"kind": kind}
    if params:
        out["params"] = params
    for k, v in (node_keys or {}).items():
        if k not in NODE_KEYS:
            raise ValueError(f"{k!r} is not a node key (those are {NODE_KEYS}); params go as keywords")
        out[k] = v
    return out


def setup(
    name: str, run_dir: str | Path | None = None, settings: dict[str, Any] | None = None, **nodes: dict[str, Any]
) -> dict[str, Any]:
    """A whole setup: its name, run folder (ipc sockets), top-level ``settings`` (``on_node_exit``,
    ``shutdown_timeout_s``, ``calibration``) and its nodes by name."""
    out: dict[str, Any] = {"name": name}
    if run_dir is not None:
        out["run_dir"] = str(run_dir)
    out.update(settings or {})
    out["nodes"] = dict(nodes)
    return out


def write_setup(path: str | Path, cfg: dict[str, Any]) -> Path:
    """Write a setup as YAML for the launcher (``robot-stack up``, ``Launcher``); returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
    return path


def _plain(x: Any) -> Any:
    """Numpy scalars and arrays, tuples and paths as YAML's plain types."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy
        return _plain(x.tolist())
    return x
