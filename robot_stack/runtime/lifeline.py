"""A node process's tie to the launcher that started it (Linux), armed before anything else.

The launcher passes its pid in ``ROBOT_STACK_PARENT_PID``. :func:`tie_to_parent` is the first
act of a node process (``robot_stack.nodes.main``, before its imports, which take seconds for torch
or MuJoCo): it asks the kernel for SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``, see
prctl(2); kept across ``execve``), and then checks that the parent is still the launcher, since a
launcher that died between ``fork`` and ``prctl`` sends no signal. No start-up window leaves an
orphan holding a camera or a GPU. Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "ROBOT_STACK_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_parent: int | None = None  # the launcher's pid, as read by tie_to_parent
_tied = False


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread exits; False if not Linux."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig)) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def parent_gone(expected: int | None = None) -> bool:
    """True when this process's parent is not ``expected`` (default: ``$ROBOT_STACK_PARENT_PID``)
    any more, i.e. the launcher died and the process was re-parented."""
    if expected is None:
        expected = _parent
        if _tied and expected is None:
            return False  # started by hand: nothing to check against
    if expected is None:
        v = os.environ.get(PARENT_ENV, "")
        if not v.isdigit():
            return False  # started by hand: nothing to check against
        expected = int(v)
    return os.getppid() != expected


def tie_to_parent() -> None:
    """Arm the parent-death signal, then exit at once (code 3) if the parent already died.
    Afterwards ``$ROBOT_STACK_PARENT_PID`` names this process, for the processes it starts."""
    global _parent, _tied
    v = os.environ.get(PARENT_ENV, "")
    _parent = int(v) if v.isdigit() else None
    _tied = True
    die_with_parent()
    if parent_gone():
        sys.stderr.write("robot_stack: the launcher died before this node started; exiting\n")
        os._exit(3)
    if _parent is not None:
        os.environ[PARENT_ENV] = str(os.getpid())  # this process's own children check against it
