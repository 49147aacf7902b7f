"""robot_stack: a real-robot visuomotor control stack.

Separate processes (camera, arm, teleop, policy, controller, recorder) talk over ZeroMQ with
msgpack headers and raw array buffers. See docs/design.md for the contracts.

On Linux without a display (no ``DISPLAY`` or ``WAYLAND_DISPLAY``) and with ``MUJOCO_GL`` unset,
importing the package sets ``MUJOCO_GL=egl`` (headless offscreen rendering, Mesa or a GPU), so the
sim cameras work on a server as they are: MuJoCo picks its GL backend when it is first imported,
and every node process imports this package before MuJoCo. An explicit ``MUJOCO_GL`` is kept.
"""

import os as _os
import sys as _sys

if (
    _sys.platform.startswith("linux")
    and "MUJOCO_GL" not in _os.environ
    and not _os.environ.get("DISPLAY")
    and not _os.environ.get("WAYLAND_DISPLAY")
):
    _os.environ["MUJOCO_GL"] = "egl"

__version__ = "0.1.0"
