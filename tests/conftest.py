import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MUJOCO_GL", "egl")

# Test tiers (docs/testing.md): unmarked tests run in-process (fake context, fake clock) and must be
# fast; ``processes`` start real processes or sockets; ``slow`` train a model or run a demo;
# ``hardware`` need a device attached. Each tier has its own limit per test (pytest-timeout).
TIER_TIMEOUT_S = {"slow": 1800, "processes": 300, "unit": 60}
#: single tests that start processes or sockets in modules that are otherwise in-process
PROCESS_TESTS = {
    "test_batching.py::test_the_batch_server_routes_each_reply_to_its_requester",
    "test_batching.py::test_the_batch_server_with_max_batch_one_takes_one_request",
    "test_feetech.py::test_so101_leader_device_on_the_fake_bus",
    "test_feetech.py::test_calibrate_servos_cli_records_offsets_and_ranges",
    "test_feetech.py::test_calibrate_servos_refuses_a_joint_that_never_moved",
    "test_dataset.py::test_sigkill_mid_episode_loses_nothing_saved_and_recovers",
    "test_generative.py::test_export_onnx_cli",
}


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """torch on one thread in the test process for the in-process and process tiers: the tests
    share 2 cores with the nodes they start (and CI with whatever else runs), and torch's default
    of one thread per core, oversubscribed, made a 4 s training test take 61 s beside one CPU hog
    per core (7 s on one thread), past the unit tier's 60 s. ``slow`` tests (their limit is
    1800 s) keep torch's default: on one thread they cost CI about 2.5 minutes more. Code under
    test that sets its own thread count (training's ``threads``) still does."""
    torch = sys.modules.get("torch")
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    if torch is None:
        try:
            import torch
        except ImportError:
            yield
            return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tiers: the older ``hil`` marker, a test that uses the ``run_dir`` fixture (ipc sockets) or is
    listed in PROCESS_TESTS is a ``processes`` test; hardware tests skip without
    ``ROBOT_STACK_HARDWARE=1``; every test gets its tier's timeout unless it sets its own."""
    hardware = os.environ.get("ROBOT_STACK_HARDWARE") == "1"
    for item in items:
        name = f"{Path(item.fspath).name}::{item.originalname}"
        if item.get_closest_marker("hil") or "run_dir" in item.fixturenames or name in PROCESS_TESTS:
            item.add_marker(pytest.mark.processes)
        if item.get_closest_marker("hardware") and not hardware:
            item.add_marker(pytest.mark.skip(reason="needs the device attached: set ROBOT_STACK_HARDWARE=1 to run it"))
        if item.get_closest_marker("timeout") is None:
            tier = (
                "slow"
                if item.get_closest_marker("slow")
                else "processes"
                if item.get_closest_marker("processes")
                else "unit"
            )
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUT_S[tier]))


@pytest.fixture
def run_dir(tmp_path):
    """A short folder for ipc sockets (ipc paths are limited to ~100 bytes)."""
    import tempfile
    import shutil

    d = tempfile.mkdtemp(prefix="rs-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


sys.path.insert(0, str(Path(__file__).parent))


from robot_stack.apps.session import LogSink  # noqa: E402  (node logs for failure messages)
from robot_stack.runtime.clock import now_ns  # noqa: E402
from robot_stack.testing import wait_until  # noqa: E402,F401  (tests import it from here too)


def published_between(witness_msgs, t0_ns: int, t1_ns: int) -> tuple[int, int]:
    """(at least, at most) messages a publisher sent with stamps from ``t0_ns`` to ``t1_ns``,
    from what a witness subscriber received (one topic, one publisher): its sequence numbers count
    what it missed too (a starved witness loses messages, the publisher's numbers go on). At least:
    the span of the witness's messages inside; at most: the span between its last message before
    and its first after (unbounded without them)."""
    seen = np.array([(m.stamp_ns, m.seq) for m in witness_msgs], dtype=np.int64).reshape(-1, 2)
    inside = np.flatnonzero((seen[:, 0] >= t0_ns) & (seen[:, 0] <= t1_ns))
    if len(inside) == 0:
        return 0, 10**9
    i0, i1 = inside[0], inside[-1]
    at_most = int(seen[i1 + 1, 1] - seen[i0 - 1, 1] - 1) if i0 > 0 and i1 + 1 < len(seen) else 10**9
    return int(seen[i1, 1] - seen[i0, 1] + 1), at_most


def wait_samples(sub, topic: str, n: int, timeout_s: float = 10.0) -> list:
    """Wait for ``n`` samples on ``topic`` newer than the newest now, and return them: a window
    measured in samples (a real stream's own clock), not a fixed sleep."""
    last = sub.latest(topic)
    seq0 = -1 if last is None else last.seq
    wait_until(
        lambda: sum(m.seq > seq0 for m in sub.history(topic)) >= n, timeout_s, what=f"{n} new samples on {topic}"
    )
    return [m for m in sub.history(topic) if m.seq > seq0]


def wait_samples_of(sub, source: str, n: int, topic: str = "robot/state", timeout_s: float = 10.0) -> None:
    """Wait for ``n`` new samples of one publisher (``source``) on a topic several publish on."""
    seqs = [m.seq for m in sub.history(topic) if m.source == source]
    seq0 = seqs[-1] if seqs else -1
    wait_until(
        lambda: sum(m.source == source and m.seq > seq0 for m in sub.history(topic)) >= n,
        timeout_s,
        what=f"{n} new samples of {source} on {topic}",
    )


def wait_past(t_ns: int, condition=None, extra_s: float = 10.0, what: str = "", describe=None):
    """Wait until the stack's clock has passed ``t_ns`` (a planned motion's end) and ``condition()``
    holds (e.g. the arm holds again); at most until ``extra_s`` after ``t_ns``."""
    return wait_until(
        lambda: now_ns() >= t_ns and (condition is None or condition()),
        max(0.0, (t_ns - now_ns()) / 1e9) + extra_s,
        what=what or "the planned end",
        describe=describe,
    )


import contextlib  # noqa: E402
import threading  # noqa: E402


@contextlib.contextmanager
def launched(cfg_path, only=None):
    """Start a stack from ``cfg_path`` with the real launcher (supervised on a thread); stop it after.

    Yields (launcher, log sink)."""
    from robot_stack.runtime.launcher import Launcher

    out = LogSink()
    launcher = Launcher(Path(cfg_path), only=only, out=out)
    launcher.start()
    t = threading.Thread(target=launcher.supervise, daemon=True)
    t.start()
    try:
        yield launcher, out
    finally:
        launcher.stop()
        t.join(10)


_REPORT: list[str] = []


@pytest.fixture
def report():
    """``report(line)``: a figure a test measured, printed in pytest's terminal summary (CI logs
    show it without ``-s``)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("measured figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


def d435_playback(bag):
    """pyrealsense2's own playback of a recording (not real-time): (pipeline, profile, first frameset);
    the caller stops the pipeline. librealsense's playback now and then delivers nothing on a loaded
    machine (seen in CI, and here under a CPU hog, in about 1 of 30 starts): a stalled playback is
    restarted up to 3 times."""
    import pyrealsense2 as rs

    for _ in range(3):
        pipe, cfg = rs.pipeline(), rs.config()
        cfg.enable_device_from_file(str(bag), repeat_playback=True)
        prof = pipe.start(cfg)
        prof.get_device().as_playback().set_real_time(False)
        ok, frames = pipe.try_wait_for_frames(10000)
        if ok:
            return pipe, prof, frames
        pipe.stop()
    raise RuntimeError(f"pyrealsense2 delivered no frame from {bag} in 3 starts")
