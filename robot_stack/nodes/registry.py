"""Node kinds (kept for imports of this name): see :mod:`robot_stack.runtime.kinds`."""

from robot_stack.runtime.kinds import KINDS, node_class, params_model

__all__ = ["KINDS", "node_class", "params_model"]
