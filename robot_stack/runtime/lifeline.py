"""A node process's tie to the launcher that started it (Linux), armed before anything else.

The launcher passes its pid in ``ROBOT_STACK_PARENT_PID``. :func:`tie_to_parent` is the first
act of a node process (``robot_stack.nodes.main``, before its imports, which take seconds for torch
or MuJoCo): it asks the kernel for SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``, see
prctl(2); kept across ``execve``), and then checks that the parent is still the launcher, since a
launcher that died between ``fork`` and ``prctl`` sends no signal. A watch thread
(:class:`ParentWatch`) backs the signal up: a Python signal handler runs only when the main thread
next runs Python code, and a main thread blocked in a C call (a driver, a render context, a
library's start-up) would never run it. The watch sees the parent change within 50 ms, sends the
same SIGTERM, and if the process is still alive after the grace period (the launcher's
``shutdown_timeout_s`` + 1 s, set by the node) it exits hard. No start-up window leaves an orphan
holding a camera or a GPU. Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

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


class ParentWatch:
    """Daemon thread: once this process's parent is not ``expected`` any more, send ``SIGTERM`` to
    this process (the clean stop path), then ``os._exit(code)`` when ``grace_s`` pass without the
    process ending. Polls ``os.getppid()`` every ``period_s`` (s); the thread holds no lock the
    main thread could hold, and writes its one line with ``os.write`` (no logging locks).

    Args:
        expected: the launcher's pid.
        grace_s: seconds from the parent's death to the hard exit; :meth:`set_grace` changes it.
        code: exit code of the hard exit (3, as for a launcher found dead at start-up).
    """

    def __init__(self, expected: int, grace_s: float = 6.0, period_s: float = 0.05, code: int = 3) -> None:
        if grace_s <= 0 or period_s <= 0:
            raise ValueError(f"grace_s and period_s must be > 0, got {grace_s}, {period_s}")
        self.expected = expected
        self.grace_s = float(grace_s)
        self.period_s = float(period_s)
        self.code = code
        self.gone_at: float | None = None  # time.monotonic() when the parent was seen gone
        self.checks = 0  # looks at the parent so far
        self._thread = threading.Thread(target=self._run, name="parent-watch", daemon=True)

    def start(self) -> ParentWatch:
        self._thread.start()
        return self

    def set_grace(self, grace_s: float) -> None:
        """The node's clean-stop budget (s), e.g. the launcher's ``shutdown_timeout_s`` + 1."""
        if grace_s <= 0:
            raise ValueError(f"grace_s must be > 0, got {grace_s}")
        self.grace_s = float(grace_s)

    def _run(self) -> None:
        while os.getppid() == self.expected:
            self.checks += 1
            time.sleep(self.period_s)
        self.gone_at = time.monotonic()
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler (or SIG_DFL) stops the process
        except OSError:
            pass
        while time.monotonic() - self.gone_at < self.grace_s:
            time.sleep(self.period_s)
        try:
            os.write(
                2,
                (
                    f"robot_stack: the launcher died and this process did not stop within "
                    f"{self.grace_s:.1f} s: exiting now\n"
                ).encode(),
            )
        except OSError:
            pass
        os._exit(self.code)


_watch: ParentWatch | None = None


def set_stop_grace(grace_s: float) -> None:
    """Grace (s) from the launcher's death to the hard exit of this process, if it is watched."""
    if _watch is not None:
        _watch.set_grace(grace_s)


def tie_to_parent() -> None:
    """Arm the parent-death signal, then exit at once (code 3) if the parent already died, then
    start the :class:`ParentWatch` (when started by a launcher). Afterwards ``$ROBOT_STACK_PARENT_PID`` names this process, for the processes it starts."""
    global _parent, _tied
    v = os.environ.get(PARENT_ENV, "")
    _parent = int(v) if v.isdigit() else None
    _tied = True
    die_with_parent()
    if parent_gone():
        sys.stderr.write("robot_stack: the launcher died before this node started; exiting\n")
        os._exit(3)
    if _parent is not None:
        global _watch
        _watch = ParentWatch(_parent).start()  # backs the signal up (see the module docstring)
        os.environ[PARENT_ENV] = str(os.getpid())  # this process's own children check against it
