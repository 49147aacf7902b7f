"""Servo-loop timing benchmark: RateLoop vs a plain ``time.sleep(period)`` loop, same run.

Both loops run at 500 Hz with the same small body (~50 us of numpy work, like one servo tick's
interpolation and safety math). Printed per loop: period p50/p99/max, |period - 2 ms| jitter
p50/p99/max, overruns, and drift (elapsed time - N x period after N periods); then ratios
plain/RateLoop. Run: ``python bench/servo.py`` (``--quick``: 2 s per loop instead of 10 s).

``--load``: the RateLoop in its own process beside one CPU hog per core (busy Python processes at
normal priority), without and with the arm node's real-time settings
(``robot_stack.runtime.realtime``: SCHED_FIFO 80, memory locked), plus the idle baseline, in the same
run; prints each, what the kernel granted, and the jitter ratios against idle.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from robot_stack.runtime.clock import RateLoop, now_ns

RATE = 500.0
PERIOD_NS = int(1e9 / RATE)


def body(x: np.ndarray) -> float:
    return float(np.tanh(x @ x.T).sum())


def measure(kind: str, seconds: float) -> dict:
    n = int(seconds * RATE)
    x = np.random.default_rng(0).standard_normal((16, 16))
    wakes = np.empty(n, np.int64)
    overruns = 0
    if kind == "rateloop":
        loop = RateLoop(RATE)
        t0 = loop.start_ns
        for i in range(n):
            body(x)
            wakes[i] = loop.sleep()
        overruns = loop.overruns
    else:
        t0 = now_ns()
        for i in range(n):
            body(x)
            time.sleep(PERIOD_NS / 1e9)
            wakes[i] = now_ns()
    periods = np.diff(wakes) / 1e6
    jitter = np.abs(periods - PERIOD_NS / 1e6)
    if kind != "rateloop":
        overruns = int((periods > 2 * PERIOD_NS / 1e6).sum())
    return {
        "p50": np.percentile(periods, 50),
        "p99": np.percentile(periods, 99),
        "max": periods.max(),
        "j50": np.percentile(jitter, 50),
        "j99": np.percentile(jitter, 99),
        "jmax": jitter.max(),
        "overruns": overruns,
        "drift_ms": (wakes[-1] - t0 - n * PERIOD_NS) / 1e6,
        "n": n,
    }


def _hog() -> None:
    while True:
        pass


def _child(seconds: float, rt: bool) -> int:
    """One measurement in this process (``--child``): JSON on stdout."""
    import json

    from robot_stack.runtime.realtime import RealtimeConfig, apply_realtime, current_policy

    granted = apply_realtime(RealtimeConfig(fifo_priority=80, lock_memory=True), "bench") if rt else []
    r = measure("rateloop", seconds)
    r = {k: float(v) for k, v in r.items()}
    r["policy"] = current_policy()
    r["granted"] = granted
    print(json.dumps(r))
    return 0


def _load(secs: float) -> int:
    import json
    import multiprocessing as mp
    import os
    import subprocess
    import sys

    def run(rt: bool) -> dict:
        cmd = [sys.executable, __file__, "--child", str(secs)] + (["--rt"] if rt else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        return json.loads(out)

    rows = {"idle": run(False)}
    hogs = [mp.get_context("spawn").Process(target=_hog, daemon=True) for _ in range(os.cpu_count() or 2)]
    for h in hogs:
        h.start()
    try:
        time.sleep(0.5)
        rows["load"] = run(False)
        rows["load + realtime"] = run(True)
    finally:
        for h in hogs:
            h.terminate()
    print(
        f"\nRateLoop at {RATE:.0f} Hz, {secs:.0f} s each, beside {len(hogs)} CPU hogs; jitter |period - 2 ms| in us\n"
    )
    print(f"{'case':16s} {'scheduling':14s} {'jitter p50':>10s} {'p99':>8s} {'max':>9s} {'overruns':>9s}")
    for k, r in rows.items():
        print(
            f"{k:16s} {r['policy']:14s} {r['j50'] * 1e3:10.1f} {r['j99'] * 1e3:8.1f} {r['jmax'] * 1e3:9.1f} "
            f"{int(r['overruns']):9d}"
        )
    for line in rows["load + realtime"]["granted"]:
        print(f"  {line}")
    i, a, b = rows["idle"], rows["load"], rows["load + realtime"]
    print(
        f"\njitter p99 vs idle: load {a['j99'] / max(i['j99'], 1e-6):.1f}x, load + realtime "
        f"{b['j99'] / max(i['j99'], 1e-6):.1f}x; load/realtime {a['j99'] / max(b['j99'], 1e-6):.1f}x "
        f"(target: p99 <= 50 us with realtime: {'met' if b['j99'] * 1e3 <= 50 else 'NOT met'})"
    )
    return 0


def main() -> int:
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return _child(float(sys.argv[2]), "--rt" in sys.argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--load", action="store_true", help="beside CPU hogs, without and with real-time settings")
    args = ap.parse_args()
    secs = 2.0 if args.quick else 10.0
    if args.load:
        return _load(secs)
    res = {k: measure(k, secs) for k in ("rateloop", "plain_sleep")}
    print(f"\nservo loop at {RATE:.0f} Hz for {secs:.0f} s each (period 2.000 ms), times in ms\n")
    print(
        f"{'loop':12s} {'period p50':>10s} {'p99':>7s} {'max':>7s} {'jitter p50':>10s} {'p99':>7s} {'max':>7s} "
        f"{'overruns':>9s} {'drift':>9s}"
    )
    for k, r in res.items():
        print(
            f"{k:12s} {r['p50']:10.3f} {r['p99']:7.3f} {r['max']:7.3f} {r['j50']:10.4f} {r['j99']:7.3f} "
            f"{r['jmax']:7.3f} {r['overruns']:9d} {r['drift_ms']:9.1f}"
        )
    a, b = res["rateloop"], res["plain_sleep"]
    print(
        f"\nplain/RateLoop: jitter p50 {b['j50'] / max(a['j50'], 1e-6):.1f}x, jitter p99 "
        f"{b['j99'] / max(a['j99'], 1e-6):.1f}x; drift after {a['n']} periods: RateLoop {a['drift_ms']:.1f} ms, "
        f"plain {b['drift_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
