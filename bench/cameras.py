"""Camera time sync through the real camera and controller nodes, in-process on a fake clock.

N synthetic cameras (``drivers/camera.py``, ``inject``) each have a device clock with an offset and
a drift, deliver their frames with a fixed latency plus jitter, and carry injected faults; each runs
in a real camera node (``robot_stack.nodes.camera``: clock mapping, frame health), and a real
controller node (``robot_stack.nodes.controller``) builds observations from all of them and the
arm's state for a policy on the in-memory bus, at 10 Hz. Everything is stepped on a
:class:`~robot_stack.testing.FakeClock`, so a run is exact and the same every time.

Printed, against the injected truth (each frame's true capture time):

- inter-camera skew error (measured skew of two cameras' nearest frames minus their true skew),
  p50 / p99 / max, for three ways of stamping: on receipt at the host (no device clock: what a
  stack that stamps after decoding gets), the raw device stamps (offsets not removed), and the
  device stamps mapped by the camera node (``DeviceClockMapper``: offset and drift);
- the drift each camera node estimated against the injected one;
- each camera's faults: injected versus detected (freezes, counter gaps, rate drops, clock jumps);
- the controller's holds (skew and stale streams), and the largest true skew of the windows that
  reached the policy against the bound (the policy reads each frame's index from its pixels).

Run: ``python3 bench/cameras.py`` (``--quick``: 60 s of frames at 30 Hz, two cameras, fixed
injections: the CI row; ``--seconds``, ``--cameras``, ``--seed`` otherwise). Exit status 1 when a
check fails: mapped skew error p99 over 1 ms, a fault missed or reported where none was injected,
or a window over the bound reaching the policy.
"""

from __future__ import annotations

import argparse
import heapq
import sys

import numpy as np

from robot_stack.comm.messages import ActionChunk, ObservationWindow, RobotState, SpecRequest
from robot_stack.control.features import ACTION_NAMES
from robot_stack.policies.base import PolicyMetadata
from robot_stack.policies.serving import spec_message
from robot_stack.testing import FakeBus, FakeClock, build_node, run_workers

ENDPOINT = "tcp://127.0.0.1:5998"
W, H = 32, 24
RATE_HZ = 30.0
FAULTS = ("freezes", "gaps", "rate_drops", "clock_jumps")


def injections(n: int, seconds: float) -> list[dict]:
    """The fixed injections: every camera 20 ms ahead (alternating sign), 100 ppm drift
    (alternating sign), 3 ms latency, 2 ms jitter; camera 0 freezes for 1 s at a third of the run,
    camera 1 loses 3 frames at half of it, and camera 0 delivers every other frame for 4 s from
    two thirds of it."""
    out = []
    for i in range(n):
        sign = 1 if i % 2 == 0 else -1
        out.append(
            {
                "clock_offset_ms": 20.0 * sign,
                "drift_ppm": 100.0 * sign,
                "latency_ms": 3.0,
                "jitter_ms": 2.0,
                "seed": i,
            }
        )
    out[0]["freeze"] = [(seconds / 3, 1.0)]
    out[0]["rate_drop"] = [(2 * seconds / 3, 4.0)]
    out[1 % n]["gap"] = [(seconds / 2, 3)]
    return out


def expected_faults(inj: dict) -> dict[str, int]:
    return {
        "freezes": len(inj.get("freeze", [])),
        "gaps": len(inj.get("gap", [])),
        "rate_drops": len(inj.get("rate_drop", [])),
        "clock_jumps": 0,
    }


def setup(inj: list[dict], max_skew_s: float | None = None) -> dict:
    cams = [f"cam{i}" for i in range(len(inj))]
    nodes = {"arm": {"kind": "arm", "params": {"driver": {"type": "ideal"}}}}
    for c, j in zip(cams, inj):
        nodes[c] = {
            "kind": "camera",
            "params": {
                "driver": {"type": "synthetic", "inject": j},
                "camera_id": c,
                "width": W,
                "height": H,
                "rate_hz": RATE_HZ,
                "depth": False,
            },
        }
    ctl = {
        "policy_endpoint": ENDPOINT,
        "rate_hz": 10,
        "strategy": "sync",
        "execute_horizon": 4,
        "cameras": cams,
        "obs_keys": [f"{c}.color" for c in cams] + ["state"],
        "obs_horizon": 2,
        "spec_timeout_s": 1.0,
    }
    if max_skew_s is not None:
        ctl["max_skew_s"] = max_skew_s
    nodes["controller"] = {"kind": "controller", "params": ctl}
    return {"name": "bench_cameras", "nodes": nodes}


class Policy:
    """Answers the spec and inference requests; records which frame of each camera every window
    carried (the synthetic camera writes its frame index into pixel (0, 0..7))."""

    def __init__(self, cams: list[str]):
        self.cams = cams
        self.md = PolicyMetadata(
            obs_shapes={"state": ((8,), "<f4"), **{f"{c}.color": ((H, W, 3), "|u1") for c in cams}},
            obs_horizon=2,
            horizon=8,
            action_dim=8,
            action_space="ee_pose+gripper",
            dt=0.1,
            offset=0,
            supports_prefix=False,
            norm_stats={},
            points={},
            action_names=tuple(ACTION_NAMES),
        )
        self.windows: list[list[list[int]]] = []  # per request, per window step: each camera's frame index

    def __call__(self, topic, msg):
        if isinstance(msg, SpecRequest):
            return spec_message(self.md)
        assert isinstance(msg, ObservationWindow)
        images = {c: np.asarray(msg.obs[f"{c}.color"]) for c in self.cams}
        self.windows.append(
            [
                [int(np.frombuffer(images[c][k, 0, :8, 0].tobytes(), np.int64)[0]) for c in self.cams]
                for k in range(len(images[self.cams[0]]))
            ]
        )
        state = np.asarray(msg.obs["state"])[-1]
        acts = np.tile(np.r_[state[:7], 1.0], (8, 1)).astype(np.float32)
        return ActionChunk(request_id=msg.request_id, actions=acts, dt=0.1, inference_ns=5_000_000)


def simulate(seconds: float = 60.0, n_cams: int = 2, seed: int = 0, max_skew_s: float | None = None) -> dict:
    """Run the rig for ``seconds`` of fake time; returns the figures (see the module docstring)."""
    inj = injections(n_cams, seconds)
    cfg = setup(inj, max_skew_s)
    cams = [f"cam{i}" for i in range(n_cams)]
    rng = np.random.default_rng(seed)
    records: dict[str, dict[int, tuple[int, int, int]]] = {c: {} for c in cams}  # index -> (recv, device, mapped)
    with FakeClock() as clock:
        bus = FakeBus()
        policy = Policy(cams)
        bus.handlers[ENDPOINT] = policy
        arm_pub, arm_rx = bus.publisher("arm"), bus.receiver("arm")
        pose = np.array([0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])

        def state():
            arm_pub.publish(
                RobotState.TOPIC,
                RobotState(q=np.zeros(7), dq=np.zeros(7), ee_pose=pose, gripper_width=0.08, mode="hold"),
            )

        state()
        cam_nodes = {c: build_node(cfg, c, bus) for c in cams}
        ctl = build_node(cfg, "controller", bus)
        t0 = clock.now_ns()
        events: list[tuple[int, int, str]] = []
        for i, c in enumerate(cams):  # free-running cameras: each its own phase
            heapq.heappush(events, (t0 + int(rng.uniform(0, 1e9 / RATE_HZ)), i, c))
        heapq.heappush(events, (t0 + 10_000_000, 100, "state"))
        heapq.heappush(events, (t0 + 100_000_000, 101, "controller"))
        end = t0 + int(seconds * 1e9)
        while events and events[0][0] < end:
            t, prio, what = heapq.heappop(events)
            clock.advance((t - clock.now_ns()) / 1e9)
            if what == "state":
                state()
                heapq.heappush(events, (t + 10_000_000, prio, what))
            elif what == "controller":
                ctl.step()
                run_workers(ctl)
                while arm_rx.recv() is not None:
                    pass
                heapq.heappush(events, (t + 100_000_000, prio, what))
            else:
                node = cam_nodes[what]
                before = node.published
                node.step()
                if node.published > before:
                    f = node.driver._last
                    records[what][f.frame_index] = (clock.now_ns(), f.device_stamp_ns, f.stamp_ns)
                heapq.heappush(events, (t + int(1e9 / RATE_HZ), prio, what))
        truth = {c: cam_nodes[c].driver.truth for c in cams}
        health = {c: cam_nodes[c].metrics() for c in cams}
        drift = {c: cam_nodes[c].driver.clock.drift_ppm for c in cams}
        m = ctl.metrics()
        bound_ns = ctl.obs.max_skew_ns
        for node in [*cam_nodes.values(), ctl]:
            node.shutdown()

    # inter-camera skew error, each way of stamping, over cam0's frames (warm-up: the first 10 s)
    errors = {"receipt": [], "device": [], "mapped": []}
    ref = cams[0]
    warm = t0 + int(min(10.0, seconds / 4) * 1e9)
    for other in cams[1:]:
        idx_o = np.array(sorted(records[other]))
        t_o = np.array([truth[other][k] for k in idx_o])
        for k, rec in records[ref].items():
            if truth[ref][k] < warm:
                continue
            j = int(np.argmin(np.abs(t_o - truth[ref][k])))
            true_skew = truth[other][idx_o[j]] - truth[ref][k]
            ro = records[other][int(idx_o[j])]
            for w, col in (("receipt", 0), ("device", 1), ("mapped", 2)):
                errors[w].append(abs((ro[col] - rec[col]) - true_skew) / 1e6)
    # the largest true skew of the windows the policy got
    sent_skew = [
        (max(truth[c][k] for c, k in zip(cams, step)) - min(truth[c][k] for c, k in zip(cams, step))) / 1e6
        for win in policy.windows
        for step in win
    ]
    return {
        "seconds": seconds,
        "cameras": cams,
        "errors_ms": {k: np.array(v) for k, v in errors.items()},
        "drift_ppm": drift,
        "drift_injected_ppm": {c: j["drift_ppm"] for c, j in zip(cams, inj)},
        "faults": {c: {k: int(health[c][f"health.{k}"]) for k in FAULTS} for c in cams},
        "faults_injected": {c: expected_faults(j) for c, j in zip(cams, inj)},
        "frames_lost": {c: int(health[c]["health.frames_lost"]) for c in cams},
        "requests": len(policy.windows),
        "skew_holds": int(m.get("skew_holds", 0)),
        "obs_holds": int(m.get("obs_holds", 0)),
        "bound_ms": bound_ns / 1e6,
        "max_sent_skew_ms": max(sent_skew) if sent_skew else float("nan"),
    }


def report(r: dict) -> list[str]:
    """Print the figures; returns the failed checks."""
    from rich.console import Console
    from rich.table import Table

    fails = []
    t = Table(title=f"camera sync: {len(r['cameras'])} cameras at {RATE_HZ:.0f} Hz, {r['seconds']:.0f} s (fake clock)")
    for col in ("stamps", "skew error p50 ms", "p99 ms", "max ms"):
        t.add_column(col)
    names = {"receipt": "on receipt (host)", "device": "device, unmapped", "mapped": "device, mapped (camera node)"}
    for k, e in r["errors_ms"].items():
        t.add_row(names[k], *(f"{np.percentile(e, q):.3f}" for q in (50, 99)), f"{e.max():.3f}")
    Console(width=120).print(t)
    if np.percentile(r["errors_ms"]["mapped"], 99) > 1.0:
        fails.append("mapped skew error p99 over 1 ms")
    t = Table(title="faults per camera: injected / detected")
    for col in ("camera", "drift ppm injected / estimated", *FAULTS, "frames lost"):
        t.add_column(col)
    for c in r["cameras"]:
        inj, det = r["faults_injected"][c], r["faults"][c]
        t.add_row(
            c,
            f"{r['drift_injected_ppm'][c]:.0f} / {r['drift_ppm'][c]:.1f}",
            *(f"{inj[k]} / {det[k]}" for k in FAULTS),
            str(r["frames_lost"][c]),
        )
        if inj != det:
            fails.append(f"{c}: faults injected {inj}, detected {det}")
    Console(width=120).print(t)
    print(
        f"controller: {r['requests']} windows to the policy, {r['skew_holds']} skew holds, "
        f"{r['obs_holds']} observation holds in all; bound {r['bound_ms']:.1f} ms, largest true skew "
        f"of a window the policy got {r['max_sent_skew_ms']:.2f} ms"
    )
    if r["max_sent_skew_ms"] > r["bound_ms"] + 1.0:
        fails.append("a window over the skew bound reached the policy")
    if r["skew_holds"] == 0:
        fails.append("no skew hold: the injected rate drop should have caused some")
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the CI row: 60 s, two cameras, seed 0")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.cameras, a.seed = 60.0, 2, 0
    if a.cameras < 2:
        print("error: --cameras must be at least 2 (skew is between cameras)", file=sys.stderr)
        return 2
    fails = report(simulate(a.seconds, a.cameras, a.seed))
    for f in fails:
        print(f"FAILED: {f}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
