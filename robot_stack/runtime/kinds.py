"""Node kinds: name -> ``module:Class``, imported lazily (by name, so the runtime layer holds no
import of the nodes layer) and so a config can be validated cheaply."""

from __future__ import annotations

import importlib

KINDS: dict[str, str] = {
    "camera": "robot_stack.nodes.camera:CameraNode",
    "monitor": "robot_stack.nodes.monitor:MonitorNode",
    "sim_world": "robot_stack.nodes.sim_world:SimWorldNode",
    "arm": "robot_stack.nodes.arm:ArmNode",
    "viewer": "robot_stack.nodes.viewer:ViewerNode",
    "policy": "robot_stack.nodes.policy:PolicyNode",
    "controller": "robot_stack.nodes.controller:ControllerNode",
    "teleop": "robot_stack.nodes.teleop:TeleopNode",
    "recorder": "robot_stack.nodes.recorder:RecorderNode",
}


def node_class(kind: str):
    """The Node subclass for ``kind``.

    Raises:
        KeyError: with a message listing the known kinds.
    """
    if kind not in KINDS:
        raise KeyError(f"unknown node kind (known: {', '.join(sorted(KINDS))})")
    module, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def params_model(kind: str):
    """The pydantic Params model of ``kind`` (raises KeyError for unknown kinds)."""
    return node_class(kind).Params
