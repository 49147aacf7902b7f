"""The Franka driver's shared-state lock: a control process that holds it (stuck, or died holding
it) is a driver fault the arm node can hold on, never a blocked servo loop. The control process is
a stand-in (no pylibfranka needed): a spawned process that takes the lock and keeps it."""

import multiprocessing as mp
import re
import threading
import time

import numpy as np
import pytest

from robot_stack.drivers.arm import ArmDriverError
from robot_stack.drivers.franka import LOCK_TIMEOUT_S, FrankaDriver, _Shared


pytestmark = pytest.mark.processes  # processes sharing a lock


def _hold_lock(lock, ready, exit_after_s):
    lock.acquire()
    ready.set()
    if exit_after_s is None:
        threading.Event().wait()  # holds it until killed
    else:
        time.sleep(exit_after_s)  # (the case's parameter: how long it holds the lock before dying)
        import os

        os._exit(3)  # dies holding the lock: a POSIX semaphore is not released for it


@pytest.fixture
def driver():
    ctx = mp.get_context("spawn")
    d = FrankaDriver("127.0.0.1", gripper=False)
    d.shared, d.lock, d.events = _Shared(), ctx.Lock(), ctx.Queue()
    yield d, ctx
    d.stop()


def _start_holder(d, ctx, exit_after_s=None):
    ready = ctx.Event()
    d.proc = ctx.Process(target=_hold_lock, args=(d.lock, ready, exit_after_s), daemon=True)
    d.proc.start()
    assert ready.wait(30)


def test_reads_and_commands_without_contention(driver):
    d, ctx = driver
    d.shared.a[8], d.shared.a[9:16] = 123, np.arange(7.0)
    d.command(np.full(7, 0.5), 0.25)
    r = d.read()
    assert r.stamp_ns == 123 and np.allclose(r.q, np.arange(7.0))
    assert np.allclose(d.shared.a[0:7], 0.5) and d.shared.a[7] == 0.25
    assert d.loop_stats()["franka.cycles"] == 0.0


def _bounded(call, limit_s: float = LOCK_TIMEOUT_S + 2.0):
    """Run ``call`` on a thread; what it raised, or a failed test (not a hung one) past ``limit_s``."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"blocked for over {limit_s:.1f} s: the servo loop would stop"
    return out


def test_a_stuck_control_process_is_a_fault_not_a_hang(driver):
    d, ctx = driver
    _start_holder(d, ctx)
    for call in (d.read, lambda: d.command(np.zeros(7), 1.0)):
        out = _bounded(call)
        assert isinstance(out.get("error"), ArmDriverError), out
        assert re.search("held the shared state.*stuck", str(out["error"])), out
    assert _bounded(d.loop_stats)["value"] == {}  # heartbeat metrics go on without the loop's counters


def test_a_control_process_that_died_holding_the_lock_is_named(driver):
    d, ctx = driver
    _start_holder(d, ctx, exit_after_s=0.0)
    d.proc.join(10)
    with pytest.raises(ArmDriverError, match=r"control process exited \(code 3\)"):
        d.read()
    out = _bounded(lambda: d.command(np.zeros(7), 1.0))  # no liveness check first: the lock's timeout names it
    assert re.search("exited with code 3 while holding it", str(out.get("error"))), out
