"""Task definitions moved to :mod:`robot_stack.tasks` (this name is kept for imports)."""

from robot_stack.tasks.definitions import *  # noqa: F401,F403
from robot_stack.tasks.definitions import TASKS  # noqa: F401
