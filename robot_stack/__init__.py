"""robot_stack: a real-robot visuomotor control stack.

Separate processes (camera, arm, teleop, policy, controller, recorder) talk over ZeroMQ with
msgpack headers and raw array buffers. See DESIGN.md for the contracts.
"""

__version__ = "0.1.0"
