"""Dynamic batching: the window logic lives with the transport that uses it
(:mod:`robot_stack.comm.batching`); kept here for imports of this name."""

from robot_stack.comm.batching import BatchWindow

__all__ = ["BatchWindow"]
