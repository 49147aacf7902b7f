"""The task registry: one line per task, name -> ``module:Class`` (imported when first asked for).

Adding a task is one file in this package (a frozen dataclass that subclasses
:class:`~robot_stack.tasks.reach.ReachTask`, with its expert) plus one line in :data:`TASKS`
(docs/guides/add-a-task.md). A task kept outside the package is registered without editing it:
the environment variable ``ROBOT_STACK_TASKS`` (``name=module:Class``, comma-separated) adds
entries, and every node process the launcher starts inherits it.
"""

from __future__ import annotations

import importlib
import os

#: name -> "module:Class"
TASKS: dict[str, str] = {
    "reach": "robot_stack.tasks.reach:ReachTask",
    "pick": "robot_stack.tasks.pick:PickTask",
    "press": "robot_stack.tasks.press:PressTask",
    "lift": "robot_stack.tasks.lift:LiftTask",
}
#: other names a task answers to (``robot-stack demo --task bimanual`` is the lift task)
ALIASES: dict[str, str] = {"bimanual": "lift"}
ENV = "ROBOT_STACK_TASKS"


def registry() -> dict[str, str]:
    """:data:`TASKS` plus the entries of ``$ROBOT_STACK_TASKS``.

    Raises:
        ValueError: an entry of the variable that is not ``name=module:Class``.
    """
    out = dict(TASKS)
    for entry in filter(None, (e.strip() for e in os.environ.get(ENV, "").split(","))):
        name, sep, target = entry.partition("=")
        if not sep or not name.strip() or ":" not in target:
            raise ValueError(f"{ENV}: {entry!r} is not name=module:Class")
        out[name.strip()] = target.strip()
    return out


def task_names() -> list[str]:
    """Every registered task name (aliases not included)."""
    return list(registry())


def canonical(name: str) -> str:
    """The registered name of ``name`` (an alias resolved).

    Raises:
        ValueError: no task of that name (the message lists the registered ones).
    """
    name = ALIASES.get(name, name)
    if name not in registry():
        known = ", ".join([*registry(), *ALIASES])
        raise ValueError(f"unknown task {name!r}: one of {known} (register a new one in robot_stack/tasks/registry.py)")
    return name


def task_class(name: str):
    """The task class registered as ``name`` (or an alias).

    Raises:
        ValueError: an unknown name, or an entry whose module or class does not import (named).
    """
    name = canonical(name)
    module, _, cls = registry()[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"task {name!r}: cannot import {module}:{cls}: {e}") from e


def task_for_config(cfg):
    """The task of a stack config: its sim world's ``task``, turned to the front of the sim world's
    robot (its description's ``sim.workspace_yaw``; a several-arm task keeps its own frame). No sim
    world: the reach task."""
    from robot_stack.control.robot_model import load_description

    sims = [nc for nc in cfg.nodes.values() if nc.kind == "sim_world"]
    cls = task_class(sims[0].typed.task if sims else "reach")
    if not sims or cls.arms > 1:
        return cls()
    desc, _ = load_description(sims[0].typed.robot)
    return cls(yaw=float(desc.sim.workspace_yaw) if desc.sim is not None else 0.0)
