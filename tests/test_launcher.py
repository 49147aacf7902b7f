"""Launcher with real node processes: death reporting, clean Ctrl-C, no orphans, no ipc leftovers."""

import os
import pytest
from robot_stack.testing.setups import node, setup, write_setup
import re
import signal
import subprocess
import sys
import threading
import time


from robot_stack.runtime.launcher import Launcher

from conftest import REPO, pid_alive, wait_until

pytestmark = pytest.mark.processes  # the launcher's process lifecycle


def write_config(tmp_path, run_dir, monitor_critical=True, **settings):
    """A synthetic camera and a monitor watching it."""
    return write_setup(
        tmp_path / "stack.yaml",
        setup(
            "t",
            run_dir,
            settings,
            camera=node("camera", driver="synthetic", camera_id="cam0", width=64, height=48, rate_hz=30),
            monitor=node("monitor", {"critical": monitor_critical}, watch=["camera"], report_every_s=0.5),
        ),
    )


class Lines:
    """Thread-safe capture of launcher output."""

    def __init__(self):
        self.lines = []
        self.lock = threading.Lock()

    def write(self, s):
        with self.lock:
            self.lines.extend(l for l in s.splitlines() if l)

    def flush(self):
        pass

    def wait_for(self, pattern, timeout=20):
        def matching():
            with self.lock:
                return next((l for l in self.lines if re.search(pattern, l)), None)

        return wait_until(
            matching, timeout, poll_s=0.02, what=f"a line matching {pattern!r}", describe=lambda: "\n".join(self.lines)
        )


def test_sigkill_of_a_node_is_reported_within_1s_and_stack_stops(tmp_path, run_dir):
    out = Lines()
    launcher = Launcher(write_config(tmp_path, run_dir), out=out)
    launcher.start()
    rc_box = []
    t = threading.Thread(target=lambda: rc_box.append(launcher.supervise()))
    t.start()
    out.wait_for(r"\[monitor\].*camera/cam0 [0-9.]+/s")  # data flows between processes
    cam_pid = launcher.nodes["camera"].proc.pid
    t_kill = time.monotonic()
    os.kill(cam_pid, signal.SIGKILL)
    line = out.wait_for(r"NODE DIED: camera killed by SIGKILL", timeout=5)
    latency = time.monotonic() - t_kill
    print(f"death of camera reported after {latency * 1e3:.0f} ms: {line}")
    assert latency < 1.0
    t.join(15)
    assert rc_box == [1]  # a critical node died
    for np_ in launcher.nodes.values():
        assert not pid_alive(np_.proc.pid)
    assert not any(run_dir.glob("*.pub"))


def test_non_critical_node_death_is_reported_and_stack_keeps_running(tmp_path, run_dir):
    out = Lines()
    launcher = Launcher(write_config(tmp_path, run_dir, monitor_critical=False), out=out)
    launcher.start()
    stop_at = []
    t = threading.Thread(target=lambda: stop_at.append(launcher.supervise(duration_s=4)))
    t.start()
    out.wait_for(r"\[monitor\] .*running")
    os.kill(launcher.nodes["monitor"].proc.pid, signal.SIGKILL)
    out.wait_for(r"NODE DIED: monitor killed by SIGKILL")
    assert launcher.nodes["camera"].proc.poll() is None  # camera still up
    t.join(20)
    assert stop_at == [0]


def _start_cli(config):
    return subprocess.Popen(
        [sys.executable, "-m", "robot_stack.cli", "up", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def _pids(proc):
    pids, lines = {}, []
    deadline = time.monotonic() + 30
    while len(pids) < 2 or not any("[monitor]" in l and "/s" in l for l in lines):
        assert time.monotonic() < deadline, "\n".join(lines)
        line = proc.stdout.readline().decode()
        lines.append(line)
        m = re.search(r"started (\w+) \(pid (\d+)", line)
        if m:
            pids[m.group(1)] = int(m.group(2))
    return pids


def test_ctrl_c_leaves_no_process_and_no_ipc_file(tmp_path, run_dir):
    proc = _start_cli(write_config(tmp_path, run_dir))
    pids = _pids(proc)
    assert all(pid_alive(p) for p in pids.values())
    assert any(run_dir.glob("*.pub"))
    proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the launcher
    out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out
    assert "stack t stopped" in out
    assert not any(pid_alive(p) for p in pids.values())
    assert list(run_dir.iterdir()) == []


def test_launcher_sigkilled_takes_its_nodes_with_it(tmp_path, run_dir):
    proc = _start_cli(write_config(tmp_path, run_dir))
    pids = _pids(proc)
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(pid_alive(p) for p in pids.values()), 10, what="every node gone")


HANGING_NODE = """
import sys, threading
from pathlib import Path
from robot_stack.runtime.config import load_config
from robot_stack.runtime.node import Node, NodeContext, NodeParams

class Hangs(Node):
    def step(self):
        pass

    def shutdown(self):
        print("shutdown started", flush=True)
        threading.Event().wait()  # a shutdown that never ends (a stuck driver, say)

cfg = load_config(sys.argv[1])
sys.exit(Hangs(NodeContext("camera", cfg, Path(sys.argv[2])), NodeParams()).run())
"""


def test_node_whose_clean_stop_hangs_exits_after_the_grace_period(tmp_path, run_dir):
    """After a SIGTERM (e.g. the kernel's, when the launcher died) a node exits by itself at the latest
    shutdown_timeout_s + 1 s later: nobody else would SIGKILL it."""
    cfg = write_config(tmp_path, run_dir, shutdown_timeout_s=1.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_NODE, str(cfg), str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # publishing: the signal handlers are installed
    wait_until(lambda: proc.poll() is not None or any(run_dir.glob("*.pub")), 30, what="the node publishing")
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    took = time.monotonic() - t0
    assert "shutdown started" in out and "took longer than 2.0 s: exiting now" in out, out
    assert proc.returncode == 1
    assert 2.0 <= took < 20, took  # not before the grace period; the upper bound only guards a hang


def test_the_run_folder_is_claimed_when_nodes_start_not_when_the_launcher_is_made(tmp_path, run_dir):
    """A launcher (or a Session) made and never started holds nothing: another process may start the
    same setup. One that another live launcher holds is refused at once, by name."""
    cfg = write_setup(tmp_path / "claim.yaml", setup("claim", run_dir, sim=node("sim_world")))
    idle = Launcher(cfg)
    assert not (run_dir / "launcher.pid").exists()
    idle.stop()  # stopping one that never started releases nothing it did not claim
    (run_dir / "launcher.pid").write_text(str(os.getppid()))  # another live launcher holds it
    with pytest.raises(RuntimeError, match="'claim' is already running"):
        Launcher(cfg)
    assert (run_dir / "launcher.pid").read_text() == str(os.getppid())
