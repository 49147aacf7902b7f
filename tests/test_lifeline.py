"""The node's tie to its launcher (robot_stack.runtime.lifeline): real processes, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, pid_alive, wait_until
from robot_stack.testing import WaitTimeout
from robot_stack.runtime.lifeline import ParentWatch

pytestmark = pytest.mark.processes  # processes outliving their parent

# The child: tied to its parent, a SIGTERM handler that only records the signal (as a node's does),
# and a main thread parked in a lock wait that the handler cannot end (as a blocked driver call).
CHILD = textwrap.dedent("""
    import os, signal, sys, threading
    from robot_stack.runtime.lifeline import set_stop_grace, tie_to_parent
    tie_to_parent()
    set_stop_grace(float(sys.argv[2]))
    signal.signal(signal.SIGTERM, lambda *_: open(sys.argv[1], "a").write("term\\n"))
    print(os.getpid(), flush=True)
    threading.Event().wait()
""")
# The launcher stand-in: starts the child with its pid in the environment, reports the child's pid.
PARENT = textwrap.dedent("""
    import os, subprocess, sys
    env = dict(os.environ, ROBOT_STACK_PARENT_PID=str(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], env=env,
                             stdout=subprocess.PIPE, text=True)
    print(child.stdout.readline().strip(), flush=True)
    child.wait()
""")


def _start(tmp_path, grace_s: float):
    marks = tmp_path / "signals.txt"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(marks), str(grace_s)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    return parent, child, marks


def _wait_gone(pid: int, timeout_s: float) -> float | None:
    t0 = time.monotonic()
    try:
        wait_until(lambda: not pid_alive(pid), timeout_s, poll_s=0.02)
    except WaitTimeout:
        return None
    return time.monotonic() - t0


def test_a_blocked_node_exits_after_the_grace_when_its_launcher_is_killed(tmp_path):
    parent, child, marks = _start(tmp_path, grace_s=1.0)
    try:
        time.sleep(0.5)  # (a negative check in another process: ten of its watch's periods with the parent alive)
        assert pid_alive(child), "the watch must leave a child with a live parent alone"
        parent.kill()
        parent.wait()
        gone_after = _wait_gone(child, 10.0)
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
    assert gone_after is not None, "the child outlived its launcher by 10 s: an orphan"
    # the clean path first (the kernel's SIGTERM and the watch's), then the hard exit at the grace
    assert marks.read_text().count("term") >= 1
    assert 0.8 < gone_after < 3.0, gone_after


def test_the_watch_waits_while_the_parent_lives():
    w = ParentWatch(os.getppid(), grace_s=0.1, period_s=0.01).start()
    wait_until(lambda: w.checks >= 20, 5, what="20 looks at the parent")  # twice the grace
    assert w.gone_at is None and w._thread.is_alive()


def test_the_watch_refuses_a_grace_that_is_not_positive():
    with pytest.raises(ValueError, match="grace_s"):
        ParentWatch(1, grace_s=0)
    w = ParentWatch(1)
    with pytest.raises(ValueError, match="grace_s"):
        w.set_grace(-1)
