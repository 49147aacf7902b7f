"""Launcher: ``robot-stack up CONFIG`` starts each node as its own OS process and supervises them.

- Every node runs as ``python -m robot_stack.nodes.main CONFIG NODE RUN_DIR``; its stdout/stderr
  lines are streamed prefixed with the node name.
- A node that exits is reported at once (the supervisor polls every 50 ms), with its exit code or
  the signal that killed it. With ``on_node_exit: shutdown`` the death of a critical node stops
  the whole stack.
- Ctrl-C / SIGTERM: every node gets SIGTERM, then SIGKILL after ``shutdown_timeout_s``; the run
  folder with the ipc sockets is removed. Nodes also get SIGTERM from the kernel if the launcher
  itself dies (PR_SET_PDEATHSIG), so no orphans are left behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from robot_stack.runtime.config import StackConfig, load_config
from robot_stack.runtime.lifeline import PARENT_ENV
from robot_stack.runtime.node import START_FAILED, START_FAILED_MARK

log = logging.getLogger(__name__)


def default_run_dir(config: StackConfig) -> Path:
    """Where a stack's ipc sockets live unless the config sets ``run_dir``: a per-user runtime folder
    named after the config, so CLI tools (``robot-stack move``, ``estop``) can find a running stack."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"robot_stack-{os.getuid()}-{config.name}"


def private_run_dir(path: Path) -> Path:
    """Create the run folder (ipc sockets, pid file) private to this user (mode 0700).

    Raises:
        RuntimeError: the folder exists and belongs to another user, or others can write to it
            (another local user could then bind the stack's sockets or read its frames).
    """
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise RuntimeError(
            f"run folder {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()}); refusing to use it"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class NodeProcess:
    name: str
    proc: subprocess.Popen
    reader: threading.Thread
    exit_reported: bool = False


def describe_exit(code: int) -> str:
    """Human text for a Popen return code (negative = killed by signal)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == START_FAILED:
        return "could not start"
    return f"exited with code {code}"


@dataclass
class Launcher:
    """Starts and supervises the nodes of one config.

    Args:
        config_path: YAML setup config.
        only: start only these nodes (default all).
        out: stream node log lines go to (default stdout).
    """

    config_path: Path
    only: list[str] | None = None
    out: object = None
    config: StackConfig = field(init=False)
    run_dir: Path = field(init=False)
    nodes: dict[str, NodeProcess] = field(default_factory=dict, init=False)
    dead: dict[str, int] = field(default_factory=dict, init=False)
    #: node -> {"node", "device", "reason", "fix"} of each node that could not start
    start_failures: dict[str, dict] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.config = load_config(self.config_path)  # raises ConfigError before anything starts
        self.out = self.out or sys.stdout
        self._own_run_dir = self.config.run_dir is None
        self.run_dir = default_run_dir(self.config) if self.config.run_dir is None else Path(self.config.run_dir)
        private_run_dir(self.run_dir)
        self._check_not_running()  # early, for a clear error; the run folder is claimed at start()
        self._claimed = False
        self._lock = threading.Lock()
        self._stopping = False

    def _check_not_running(self) -> None:
        """Raise if another live launcher holds this stack's run folder (its ``launcher.pid``)."""
        pidfile = self.run_dir / "launcher.pid"
        if pidfile.exists():
            try:
                other = int(pidfile.read_text().strip())
            except ValueError:
                other = -1
            if other > 0 and other != os.getpid() and _alive(other):
                raise RuntimeError(
                    f"stack {self.config.name!r} is already running (launcher pid {other}, "
                    f"run folder {self.run_dir}); stop it first"
                )

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.out, flush=True)

    def _pump(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(START_FAILED_MARK):  # the node's own one-line report: kept for the summary
                try:
                    self.start_failures[name] = json.loads(line[len(START_FAILED_MARK) :])
                except ValueError:
                    self.start_failures[name] = {"node": name, "device": "", "reason": line, "fix": ""}
                continue
            self._print(f"{time.strftime('%H:%M:%S')} [{name}] {line}")
        stream.close()

    def summary(self) -> list[str]:
        """One line per node that could not start: node, device, reason, fix (empty when all started)."""
        return [
            f"{n}: {f.get('device', '')}: {f.get('reason', '')} (fix: {f.get('fix', '')})"
            for n, f in sorted(self.start_failures.items())
        ]

    def start(self) -> None:
        """Start every node process (no waiting for readiness)."""
        names = self.only or list(self.config.nodes)
        for n in names:
            if n not in self.config.nodes:
                raise ValueError(f"no node named {n!r} in {self.config_path}")
        # the run folder is claimed when nodes start, not when the launcher is made: a launcher
        # (or a Session) made and never started holds nothing
        self._check_not_running()
        (self.run_dir / "launcher.pid").write_text(str(os.getpid()))
        self._claimed = True
        for n in names:
            nc = self.config.nodes[n]
            env = dict(os.environ, PYTHONUNBUFFERED="1", **nc.env)
            env[PARENT_ENV] = str(os.getpid())  # the node checks it is still ours (robot_stack.runtime.lifeline)
            if sys.stdin is not None and sys.stdin.isatty():  # keyboard teleop reads the launcher's terminal
                env.setdefault("ROBOT_STACK_TTY", os.ttyname(sys.stdin.fileno()))
            proc = subprocess.Popen(
                [sys.executable, "-m", "robot_stack.nodes.main", str(self.config_path), n, str(self.run_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C goes to the launcher, which stops nodes in order
                preexec_fn=(lambda nice=nc.nice: os.nice(nice)) if nc.nice else None,
            )
            t = threading.Thread(target=self._pump, args=(n, proc.stdout), daemon=True)
            t.start()
            self.nodes[n] = NodeProcess(n, proc, t)
            self._print(
                f"{time.strftime('%H:%M:%S')} [launcher] started {n} (pid {proc.pid}, kind {self.config.nodes[n].kind})"
            )

    def poll(self) -> list[str]:
        """Report nodes that exited since the last call; returns their names."""
        newly = []
        for n, np_ in self.nodes.items():
            code = np_.proc.poll()
            if code is not None and not np_.exit_reported:
                np_.exit_reported = True
                self.dead[n] = code
                newly.append(n)
                if not self._stopping:
                    self._print(f"{time.strftime('%H:%M:%S')} [launcher] NODE DIED: {n} {describe_exit(code)}")
        return newly

    def supervise(self, duration_s: float | None = None) -> int:
        """Run until Ctrl-C, ``duration_s``, or a critical node's death; then stop everything.

        Returns:
            0 after a clean stop, 1 if a critical node died.
        """
        stop = threading.Event()
        prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread():
            for s in prev:
                signal.signal(s, lambda *_: stop.set())
        rc = 0
        t_end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not stop.is_set():
                for n in self.poll():
                    crit = self.config.nodes[n].critical
                    if self.config.on_node_exit == "shutdown" and crit:
                        self._print(
                            f"{time.strftime('%H:%M:%S')} [launcher] critical node {n} is gone: stopping the stack"
                        )
                        rc = 1
                        stop.set()
                if t_end is not None and time.monotonic() >= t_end:
                    break
                stop.wait(0.05)
        finally:
            self.stop()
            if threading.current_thread() is threading.main_thread():
                for s, h in prev.items():
                    signal.signal(s, h)
        return rc

    def stop(self) -> None:
        """SIGTERM the nodes in three stages, SIGKILL stragglers after each stage's grace period,
        remove the run folder. Order: whatever commands the arm first, then the arm nodes (they
        bring a moving arm to rest, jerk-limited, while the robot still listens), the sim world
        (the robot) last."""
        self._stopping = True
        others, arms, sims = [], [], []
        for np_ in self.nodes.values():
            kind = self.config.nodes[np_.name].kind
            (arms if kind == "arm" else sims if kind == "sim_world" else others).append(np_)
        for stage in (others, arms, sims):
            self._stop_stage(stage)
        # the run folder goes once every node is down (not after the first stage: the arm and sim
        # nodes still had their sockets in it while they stopped)
        if self._claimed:
            (self.run_dir / "launcher.pid").unlink(missing_ok=True)
            self._claimed = False
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            for p in self.run_dir.glob("*"):
                if p.is_socket():
                    p.unlink(missing_ok=True)
        for np_ in self.nodes.values():  # the report line may still have been in the pipe
            np_.reader.join(timeout=1)
        self._print(f"{time.strftime('%H:%M:%S')} [launcher] stack {self.config.name} stopped")
        lines = self.summary()
        if lines:
            self._print(f"{len(lines)} node{'s' if len(lines) > 1 else ''} could not start:")
            for line in lines:
                self._print(f"  {line}")

    def _stop_stage(self, stage: list) -> None:
        for np_ in stage:
            if np_.proc.poll() is None:
                try:
                    os.killpg(np_.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        for np_ in stage:
            try:
                np_.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._print(f"{time.strftime('%H:%M:%S')} [launcher] {np_.name} ignored SIGTERM: killing")
            # kill the node's whole process group (helpers it started included)
            try:
                os.killpg(np_.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            np_.proc.wait()
            np_.reader.join(timeout=1)


def up(config_path: str | Path, duration_s: float | None = None, only: list[str] | None = None) -> int:
    """Start a stack and supervise it until Ctrl-C (or ``duration_s``). Returns the exit code."""
    launcher = Launcher(Path(config_path), only=only)
    launcher.start()
    return launcher.supervise(duration_s)
