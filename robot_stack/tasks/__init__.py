"""Task definitions as pure data and functions: scene, randomisation, success check, the scripted
expert's targets. Importable by drivers, teleop, nodes and apps; imports none of them."""

from robot_stack.tasks.definitions import *  # noqa: F401,F403
from robot_stack.tasks.definitions import TASKS  # noqa: F401
