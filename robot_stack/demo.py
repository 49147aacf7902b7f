"""``robot-stack demo``: the multi-process stack on the simulated Panda.

Brings up ``configs/sim_panda.yaml`` (sim world, arm node, two RGB-D camera nodes, monitor), drives
the TCP around a 15 cm square through the same waypoint path a policy or teleop uses, and prints
what a user checks first on a new setup: tracking error, servo-loop timing, camera rates and
latency, physics real-time violations. The collect -> train -> deploy job is built on top of this
(open issues).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np


def config_path(name: str) -> Path:
    """Path of a shipped config in ``configs/`` (repository checkout)."""
    p = Path(__file__).resolve().parents[1] / "configs" / name
    if not p.is_file():
        raise FileNotFoundError(f"config {name} not found at {p}")
    return p


class _Quiet:
    """Keeps node logs for the error report instead of flooding the terminal."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, s: str) -> None:
        self.lines.extend(s.splitlines())

    def flush(self) -> None:
        pass


def _dist_to_path(p: np.ndarray, corners: list[np.ndarray]) -> float:
    best = np.inf
    for a, b in zip(corners[:-1], corners[1:]):
        ab = b - a
        s = np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1)
        best = min(best, float(np.linalg.norm(p - (a + s * ab))))
    return best


def run_demo(quick: bool = False, verbose: bool = False) -> int:
    """Run the demo; returns the exit code (0 when the arm tracked the square)."""
    from rich.console import Console
    from rich.table import Table

    from .arm_client import ArmClient, polyline, square
    from .clock import now_ns
    from .launcher import Launcher
    from .transport import Subscriber

    console = Console()
    out = None if verbose else _Quiet()
    launcher = Launcher(config_path("sim_panda.yaml"), out=out)
    cfg, rd = launcher.config, launcher.run_dir
    console.print(f"[bold]robot-stack demo[/bold]: starting {len(cfg.nodes)} processes "
                  f"({', '.join(cfg.nodes)}) from configs/sim_panda.yaml")
    launcher.start()
    sup = threading.Thread(target=launcher.supervise, daemon=True)
    sup.start()
    subs = Subscriber([cfg.pub_endpoint(n, rd) for n in ("arm", "cam_scene", "cam_wrist", "sim")],
                      ("robot/state", "camera/", "heartbeat/"), history=5000, name="demo")
    client = None
    try:
        with console.status("waiting for the sim world, the arm and the cameras ..."):
            ok = all(subs.wait_for(t, 90) is not None for t in ("robot/state", "camera/scene", "camera/wrist"))
        if not ok:
            console.print("[red]the stack did not come up[/red]")
            if isinstance(out, _Quiet):
                console.print("\n".join(out.lines[-30:]))
            return 1
        client = ArmClient(cfg, rd, source="demo")
        start = np.array(subs.latest("robot/state").ee_pose)
        side = 0.10 if quick else 0.15
        corners = square(np.array([0.45, 0.0, 0.30]), side)
        with console.status("moving to the start corner ..."):
            t_end = polyline(client, start, corners[:1], now_ns(), speed=0.1)
            time.sleep((t_end - now_ns()) / 1e9 + 0.5)
        t0 = now_ns()
        with console.status(f"tracing a {side * 100:.0f} cm square at 0.1 m/s ..."):
            t_end = polyline(client, np.array(subs.latest("robot/state").ee_pose), corners[1:], t0, speed=0.1)
            time.sleep((t_end - now_ns()) / 1e9 + 0.5)
        states = [m for m in subs.history("robot/state") if m.stamp_ns >= t0]
        pos = np.array([m.ee_pose[:3] for m in states])
        err = np.array([_dist_to_path(p, corners) for p in pos]) * 1e3
        hb = {n: subs.latest(f"heartbeat/{n}") for n in ("arm", "cam_scene", "cam_wrist", "sim")}
        cams = {c: [m for m in subs.history(f"camera/{c}") if m.stamp_ns >= t0] for c in ("scene", "wrist")}
    finally:
        if client is not None:
            client.close()
        subs.close()
        launcher.stop()
        sup.join(10)

    t = Table(title="robot-stack demo: simulated Franka Panda, multi-process stack")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("TCP path error vs the commanded square (mean / max)", f"{err.mean():.2f} / {err.max():.2f} mm")
    t.add_row("square extent x / y", f"{np.ptp(pos[:, 0]) * 1e3:.1f} / {np.ptp(pos[:, 1]) * 1e3:.1f} mm")
    arm = hb["arm"].metrics if hb["arm"] else {}
    if arm:
        t.add_row("servo loop 500 Hz: period p50 / p99 / max",
                  f"{arm['loop.period_p50_s'] * 1e3:.3f} / {arm['loop.period_p99_s'] * 1e3:.3f} / "
                  f"{arm['loop.period_max_s'] * 1e3:.1f} ms")
        t.add_row("servo loop overruns", f"{arm['loop.overruns']:.0f} of {arm['loop.periods']:.0f}")
        t.add_row("safety events", f"{sum(v for k, v in arm.items() if k.startswith('safety.')):.0f}")
    for c, frames in cams.items():
        if len(frames) > 1:
            dur = (frames[-1].stamp_ns - frames[0].stamp_ns) / 1e9
            t.add_row(f"camera {c}: rate (configured 30 Hz)", f"{(len(frames) - 1) / dur:.1f} Hz")
    sim = hb["sim"].metrics if hb["sim"] else {}
    if sim:
        t.add_row("physics real-time violations", f"{sim['realtime_violations']:.0f}")
    console.print(t)
    ok = err.mean() < 5.0 and abs(np.ptp(pos[:, 0]) - side) < 0.01
    console.print("[green]OK[/green]" if ok else "[red]tracking failed[/red]")
    return 0 if ok else 1
