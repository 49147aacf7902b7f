"""The sim tasks as data: one file per task (its scene additions and their randomisation, success
check, scripted expert, text and demo and training defaults) and one registry line each
(:mod:`robot_stack.tasks.registry`). Pure: importable by drivers, teleop, nodes and apps; imports
none of them."""

from robot_stack.tasks.base import OBJECTS_TOPIC, Expert
from robot_stack.tasks.lift import LiftExpert, LiftTask
from robot_stack.tasks.pick import PickExpert, PickTask
from robot_stack.tasks.press import PressExpert, PressTask
from robot_stack.tasks.reach import ReachExpert, ReachTask
from robot_stack.tasks.registry import TASKS, canonical, task_class, task_for_config, task_names

__all__ = [
    "OBJECTS_TOPIC",
    "TASKS",
    "Expert",
    "LiftExpert",
    "LiftTask",
    "PickExpert",
    "PickTask",
    "PressExpert",
    "PressTask",
    "ReachExpert",
    "ReachTask",
    "canonical",
    "task_class",
    "task_for_config",
    "task_names",
]
