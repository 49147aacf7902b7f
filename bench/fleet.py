"""A fleet against one policy server: dynamic batching vs one request at a time (issue 20).

N virtual robots (ZeroMQ REQ clients on one asyncio loop, each like a controller: one request in
flight, the next at its 10 Hz tick or, when a reply comes late, right after it) send observation
windows to one policy node, a real process started by the launcher. The policy is the deployment
size of ``bench/inference.py`` (one RGB-D camera at 96x96, To = 2, H = 16, one-step flow, untrained:
latency does not depend on the weights), torch on every CPU core (``--threads``: a policy server
has its machine to itself; here the load generator shares it).

Two servers in the same run: ``serial`` (``batch.max_batch: 1``) and ``batched`` (``max_batch``
16, ``window_ms`` 2). For each N: round trip p50/p99 (ms), achieved request rate (total Hz and
per robot), batch size (mean over the round, and the largest of the node's last 500 batches, from
its heartbeat), server CPU (% of one core, from
``/proc``) and GPU utilisation (``nvidia-smi`` when present). Then, per server, the largest N whose
p99 stays within the control budget (100 ms: the 10 Hz request period; also 150 and 200 ms, for
setups whose execution horizon tolerates one or two steps of inference delay) while every robot
gets at least 90 % of its 10 Hz, their ratio, and the peak request rates.

Observation windows are random at the policy's shapes (8 distinct windows, sent in turn); a
recorded episode's windows would load the server the same way.

``python bench/fleet.py`` (N = 1, 2, 4, 6, 8, 12, ..., 64; 8 s per point); ``--quick``: N = 1, 4, 16, 3 s per
point. ``--device cuda`` serves on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robot_stack.comm.codec import decode, encode  # noqa: E402
from robot_stack.comm.messages import ActionChunk, ObservationWindow  # noqa: E402

RATE_HZ = 10.0
BUDGET_MS = 100.0
SERVERS = {"serial": {"max_batch": 1, "window_ms": 0.0}, "batched": {"max_batch": 16, "window_ms": 2.0}}


def make_policy(d: Path, device: str) -> Path:
    import torch

    from robot_stack.policies.generative import GenerativePolicyModel, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(
        cameras={"scene": "rgbd"},
        image_hw=(96, 96),
        proprio_dim=8,
        horizon=16,
        action_dim=8,
        kind="flow",
        sample_steps=1,
    )
    return save_checkpoint(GenerativePolicyModel(cfg).eval(), d / "fleet.safetensors")


def windows(n: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "scene.color": rng.integers(0, 255, (2, 96, 96, 3), dtype=np.uint8),
            "scene.depth": rng.integers(300, 1500, (2, 96, 96), dtype=np.uint16),
            "state": rng.standard_normal((2, 8)).astype(np.float32),
        }
        for _ in range(n)
    ]


async def robot(i: int, endpoint: str, obs: list[dict], t_end: float, rtts: list, errors: list) -> int:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(endpoint)
    period = 1.0 / RATE_HZ
    t_next = time.monotonic() + (i * 0.6180339 % 1.0) * period  # spread phases (golden ratio)
    sent = 0
    try:
        while True:
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            if time.monotonic() >= t_end:
                return sent
            msg = ObservationWindow(
                request_id=i * 1_000_000 + sent, obs=obs[(i + sent) % len(obs)], obs_age_ns=np.zeros(2, np.int64)
            )
            t0 = time.perf_counter()
            await sock.send_multipart(encode("infer", msg), copy=False)
            if not await sock.poll(5000):
                errors.append(f"robot {i}: no reply within 5 s")
                return sent
            _, reply = decode(await sock.recv_multipart(copy=False))
            rtts.append((time.perf_counter() - t0) * 1e3)
            if not isinstance(reply, ActionChunk) or reply.request_id != msg.request_id:
                errors.append(f"robot {i}: reply {getattr(reply, 'request_id', reply)} to request {msg.request_id}")
            sent += 1
            t_next = max(t_next + period, time.monotonic())  # a late reply: the next request right away
    finally:
        sock.close(0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its threads (s), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gpu_util() -> str:
    if shutil.which("nvidia-smi") is None:
        return "n/a"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split()
        return f"{out[0]} %" if out else "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def run_server(
    name: str,
    batch: dict,
    policy: Path,
    device: str,
    ns: list[int],
    seconds: float,
    console,
    threads: int | None = None,
) -> list[dict]:
    import yaml

    from robot_stack.apps.session import Session

    d = Path(tempfile.mkdtemp(prefix="fleet-"))
    cfg = {
        "name": f"fleet_{name}",
        "nodes": {
            "policy": {
                "kind": "policy",
                "params": {
                    "backend": {"type": "checkpoint", "path": str(policy), "seed": 0, "device": device},
                    "batch": batch,
                    "max_obs_age_s": 10.0,
                    "threads": threads or os.cpu_count() or 1,
                },
            }
        },
    }
    (d / "fleet.yaml").write_text(yaml.safe_dump(cfg))
    s = Session(d / "fleet.yaml")
    rows = []
    try:
        s.start(("heartbeat/policy",), timeout_s=120)
        endpoint = s.cfg.in_endpoint("policy", s.rd)
        pid = s.launcher.nodes["policy"].proc.pid
        obs = windows()
        asyncio.run(_round(endpoint, obs, 1, time.monotonic() + 1.0, [], []))  # warm-up
        for n in ns:
            rtts: list[float] = []
            errors: list[str] = []
            hb0 = s.heartbeat("policy")
            c0, t0 = cpu_seconds(pid), time.monotonic()
            asyncio.run(_round(endpoint, obs, n, t0 + seconds, rtts, errors))
            wall = time.monotonic() - t0
            cpu = (cpu_seconds(pid) - c0) / wall * 100
            time.sleep(1.2)  # the next heartbeat (1 Hz) carries this round's batches
            hb = s.heartbeat("policy")
            nb = hb.get("batches", 0) - hb0.get("batches", 0)
            nreq = hb.get("requests", 0) - hb0.get("requests", 0)
            a = np.array(rtts) if rtts else np.array([np.nan])
            row = {
                "server": name,
                "n": n,
                "p50": float(np.percentile(a, 50)),
                "p99": float(np.percentile(a, 99)),
                "rate": len(rtts) / wall,
                "per_robot": len(rtts) / wall / n,
                "batch_mean": nreq / nb if nb else float("nan"),
                "batch_max": hb.get("batch_max", 1.0),
                "batches": nb,
                "cpu": cpu,
                "gpu": gpu_util(),
                "errors": errors,
            }
            rows.append(row)
            console.print(
                f"  {name:8s} N={n:3d}: p50 {row['p50']:7.1f} ms  p99 {row['p99']:7.1f} ms  "
                f"{row['rate']:6.1f} Hz ({row['per_robot']:4.1f} per robot)  batch mean "
                f"{row['batch_mean']:4.1f} max {row['batch_max']:3.0f}  CPU {cpu:4.0f} %"
                + (f"  ERRORS {len(errors)}: {errors[0]}" if errors else "")
            )
            if row["p99"] > 4 * BUDGET_MS:  # saturated: larger fleets only queue longer
                break
        s.raise_if_dead()
    finally:
        s.close()
    return rows


async def _round(endpoint: str, obs: list[dict], n: int, t_end: float, rtts: list, errors: list) -> None:
    await asyncio.gather(*(robot(i, endpoint, obs, t_end, rtts, errors) for i in range(n)))


def within_budget(rows: list[dict], budget_ms: float = BUDGET_MS) -> int:
    """Largest N with p99 <= ``budget_ms`` and >= 90 % of the request rate per robot (0: none)."""
    ok = [r["n"] for r in rows if r["p99"] <= budget_ms and r["per_robot"] >= 0.9 * RATE_HZ and not r["errors"]]
    return max(ok, default=0)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1, 4, 16; 3 s per point")
    ap.add_argument("--device", default="cpu", help="torch device of the policy server (cpu, cuda)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per point")
    ap.add_argument("--threads", type=int, default=None, help="the server's torch CPU threads (default: every core)")
    args = ap.parse_args(argv)
    console = Console()
    ns = [1, 4, 16] if args.quick else [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64]
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    with tempfile.TemporaryDirectory() as d:
        policy = make_policy(Path(d), args.device)
        rows = []
        for name, batch in SERVERS.items():
            console.print(f"[bold]{name}[/] server (batch {batch})")
            rows += run_server(name, batch, policy, args.device, ns, seconds, console, args.threads)
    t = Table(
        title=f"fleet vs one policy server ({args.device}, {args.threads or os.cpu_count()} threads, one-step "
        f"flow, 96x96 RGB-D, {RATE_HZ:.0f} Hz "
        f"per robot, {seconds:.0f} s per point)"
    )
    for c in (
        "server",
        "N",
        "RTT p50 ms",
        "RTT p99 ms",
        "rate Hz",
        "per robot Hz",
        "batch mean/max",
        "server CPU",
        "GPU",
    ):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(
            r["server"],
            str(r["n"]),
            f"{r['p50']:.1f}",
            f"{r['p99']:.1f}",
            f"{r['rate']:.1f}",
            f"{r['per_robot']:.1f}",
            f"{r['batch_mean']:.1f}/{r['batch_max']:.0f}",
            f"{r['cpu']:.0f} %",
            r["gpu"],
        )
    console.print(t)
    for budget in (BUDGET_MS, 1.5 * BUDGET_MS, 2 * BUDGET_MS):
        serial = within_budget([r for r in rows if r["server"] == "serial"], budget)
        batched = within_budget([r for r in rows if r["server"] == "batched"], budget)
        ratio = batched / serial if serial else float("inf")
        console.print(
            f"robots served within a {budget:.0f} ms p99 budget at >= 90 % of {RATE_HZ:.0f} Hz: "
            f"serial {serial}, batched {batched} (ratio {ratio:.1f}x; largest N measured {max(ns)})"
        )
    peak = {k: max((r["rate"] for r in rows if r["server"] == k), default=0.0) for k in SERVERS}
    console.print(
        f"peak request rate: serial {peak['serial']:.0f} Hz, batched {peak['batched']:.0f} Hz "
        f"(ratio {peak['batched'] / max(peak['serial'], 1e-9):.1f}x)"
    )
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        console.print(f"[red]{len(errors)} errors, first: {errors[0]}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
