"""Smaller holes: CLI errors as one line, LeRobot import failures leave nothing behind, the run
folder is private, the shared-memory ring only runs on x86 store ordering, a node's failing steps
and handlers are counted, real-time settings report refusals."""

import collections
import os
import subprocess
import sys
import textwrap

import pytest
from robot_stack.testing.setups import node, setup, write_setup

from conftest import REPO


pytestmark = pytest.mark.processes  # CLI and node processes


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "robot_stack.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _one_clear_line(r, pattern):
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and pattern in lines[0], r.stderr


def test_import_of_a_folder_that_is_not_a_lerobot_dataset(tmp_path):
    (tmp_path / "photos").mkdir()
    r = _cli("import", tmp_path / "photos", "--out", tmp_path / "out")
    _one_clear_line(r, "is not a LeRobot dataset (no meta/info.json)")
    (tmp_path / "bad" / "meta").mkdir(parents=True)
    (tmp_path / "bad" / "meta" / "info.json").write_text("{\"codebase_version\": \"v3.0\"}")
    r = _cli("import", tmp_path / "bad", "--out", tmp_path / "out")
    _one_clear_line(r, "unreadable LeRobot dataset")


def test_import_with_a_missing_video_leaves_no_partial_episode(tmp_path):
    from robot_stack.data.lerobot import export_lerobot

    from test_training import make_episode

    eps = [make_episode(tmp_path / "native", seed=i) for i in range(2)]
    out = export_lerobot(eps, tmp_path / "lr", fps=10)
    for v in (out / "videos").rglob("*.mp4"):
        v.unlink()
    r = _cli("import", out, "--out", tmp_path / "back", "--require-videos")
    _one_clear_line(r, "is missing")
    assert not list((tmp_path / "back").glob("*.partial")) and not list((tmp_path / "back").glob("episode_*"))
    # without --require-videos the tabular streams come in, and each skipped video is named
    r = _cli("import", out, "--out", tmp_path / "tabular")
    assert r.returncode == 0 and r.stdout.count("imported without it") == 2 and "imported 2 episodes" in r.stdout


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    r = _cli(
        "deploy",
        REPO / "configs" / "sim_panda_reach.yaml",
        "--policy",
        tmp_path / "nope.safetensors",
        "--episodes",
        "1",
    )
    _one_clear_line(r, "not found")
    r = _cli(
        "--debug",
        "deploy",
        REPO / "configs" / "sim_panda_reach.yaml",
        "--policy",
        tmp_path / "nope.safetensors",
        "--episodes",
        "1",
    )
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_a_dead_node_in_a_job_is_one_line(monkeypatch, capsys):
    from robot_stack import cli
    from robot_stack.apps.session import SessionError

    def dies(args):
        raise SessionError("node died: controller killed by SIGKILL", "12:00:00 [controller] ...\nmany lines")

    parser = cli.build_parser()
    args = parser.parse_args(["deploy", "x.yaml", "--policy", "p.safetensors", "--episodes", "1"])
    monkeypatch.setattr(args, "fn", dies)
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, a: args})())
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "robot-stack deploy: error: node died: controller killed by SIGKILL"


def test_run_folder_is_private_and_refused_when_another_user_owns_it(tmp_path):
    from robot_stack.runtime.launcher import private_run_dir

    d = private_run_dir(tmp_path / "run")
    assert (d.stat().st_mode & 0o777) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    assert (private_run_dir(loose).stat().st_mode & 0o777) == 0o700  # tightened
    if os.geteuid() != 0:
        pytest.skip("changing a folder's owner needs root (CI runs as root)")
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 12345, 12345)
    with pytest.raises(RuntimeError, match="belongs to uid 12345"):
        private_run_dir(other)


def test_shared_memory_ring_only_with_x86_store_ordering(monkeypatch, tmp_path):
    import platform

    from robot_stack.comm import transport
    from robot_stack.comm.shm_ring import ring_supported

    assert ring_supported("x86_64") and not ring_supported("aarch64") and not ring_supported("riscv64")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(transport, "_SHM_NOTED", False)
    pub = transport.Publisher(f"ipc://{tmp_path}/p.pub", "t")
    try:
        assert pub._use_shm is False  # falls back to plain ipc
    finally:
        pub.close()
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    pub = transport.Publisher(f"ipc://{tmp_path}/q.pub", "t")
    try:
        assert pub._use_shm is True
    finally:
        pub.close()


NODE_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from robot_stack.runtime.config import load_config
    from robot_stack.runtime.node import Node, NodeContext, NodeParams, setup_logging

    class Flaky(Node):
        default_rate_hz = 200.0
        MAX_FAILING_S = 0.3
        def configure(self):
            self.n = 0
        def step(self):
            self.n += 1
            if self.n % 3 == 0 or self.n > 60:  # some steps fail, then every step does
                raise ValueError("boom")
            self.guarded("input", self._handle, self.n)
        def _handle(self, n):
            if n % 5 == 0:
                raise KeyError("bad message")
        def shutdown(self):
            print("STEP_ERRORS", self.step_errors, "REJECTED", sum(self.input_rejections.values()), flush=True)

    setup_logging("flaky")
    cfg = load_config(sys.argv[1])
    sys.exit(Flaky(NodeContext("flaky", cfg, Path(sys.argv[2])), NodeParams()).run())
""")


def test_failing_steps_and_handlers_are_counted_and_persistent_failure_ends_the_node(tmp_path, run_dir):
    cfg = tmp_path / "c.yaml"
    write_setup(cfg, setup("flaky", run_dir, flaky=node("monitor", watch=["flaky"])))
    r = subprocess.run(
        [sys.executable, "-c", NODE_SCRIPT, cfg, run_dir], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # every step failing for MAX_FAILING_S ends it, with a clear line
    assert "every step failed for 0.3 s" in out
    errors = int(out.split("STEP_ERRORS")[1].split()[0])
    rejected = int(out.split("REJECTED")[1].split()[0])
    assert errors > 60 // 3 and rejected == len([n for n in range(1, 61) if n % 5 == 0 and n % 3])


def test_realtime_settings_report_what_was_refused():
    from robot_stack.runtime.realtime import RealtimeConfig, RealtimeError, apply_realtime

    lines = apply_realtime(RealtimeConfig(cpus=[4096]))
    assert len(lines) == 1 and "refused" in lines[0]
    with pytest.raises(RealtimeError, match="CPU affinity"):
        apply_realtime(RealtimeConfig(cpus=[4096], required=True))
    before = os.sched_getaffinity(0)
    try:
        lines = apply_realtime(RealtimeConfig(cpus=[sorted(before)[0]]))
        assert "pinned to CPUs" in lines[0]
    finally:
        os.sched_setaffinity(0, before)


def test_the_guarded_handler_counts_by_error():
    from robot_stack.runtime.node import Node, NodeFatal

    n = Node.__new__(Node)
    n.input_rejections = collections.Counter()
    assert n.guarded("x", lambda: None) is True
    assert n.guarded("x", lambda: 1 / 0) is False
    assert n.input_rejections == {"x.ZeroDivisionError": 1}
    with pytest.raises(NodeFatal):
        n.guarded("x", lambda: (_ for _ in ()).throw(NodeFatal("stop")))
