"""Recording benchmark: 2 RGB-D cameras 640x480 at 30 Hz + robot state at 500 Hz, recorded live.

Part 1 (live, real processes): the sim world and arm node (robot state published at 500 Hz), two
synthetic RGB-D camera nodes at 640x480 and 30 Hz, and the recorder node, started from one config
by the launcher. One episode of ``--seconds`` (60 s; ``--quick``: 10 s) is recorded. Printed per
stream: samples expected / written / dropped (the recorder's queue drops, and gaps in the camera
frame counters), then write throughput, recorder CPU (from /proc) and disk per minute of
demonstration.

Part 2 (same run, offline, on the frames just recorded): the cost of the color storage we use
(zarr + Blosc lz4, lossless) against H.264 through PyAV (libx264, ultrafast, crf 18), measured as
CPU seconds and bytes per minute of one camera, with ratios H.264/ours. This is the measurement
behind storing color losslessly in zarr.

Run: ``python bench/record.py`` (``--quick`` for CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robot_stack.comm.messages import CameraFrame, RobotState  # noqa: E402
from robot_stack.testing.setups import node, setup, write_setup  # noqa: E402


def record_setup(root) -> dict:
    """Sim and arm (500 Hz states), two synthetic 640x480 cameras at 30 Hz, the recorder."""

    def cam(camera_id):
        return node("camera", driver="synthetic", camera_id=camera_id, width=640, height=480, rate_hz=30)

    return setup(
        "bench_record",
        sim=node("sim_world", rate_hz=500),
        arm=node("arm", rate_hz=500, state_rate_hz=500),
        cam_a=cam("a"),
        cam_b=cam("b"),
        recorder=node("recorder", root=str(root), cameras=["cam_a", "cam_b"]),
    )


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def live(seconds: float, work: Path) -> dict:
    from robot_stack.data.dataset import list_episodes, open_episode
    from robot_stack.apps.session import Session

    cfg = work / "bench_record.yaml"
    root = work / "episodes"
    write_setup(cfg, record_setup(root))
    s = Session(cfg)
    try:
        s.start((RobotState.TOPIC, "camera/a", "camera/b", "heartbeat/recorder"))
        rec_pid = s.launcher.nodes["recorder"].proc.pid
        time.sleep(1.0)
        cpu0 = _cpu_s(rec_pid)
        s.send_event("start", ["recorder"])
        t0 = time.monotonic()
        time.sleep(seconds)
        s.send_event("stop", ["recorder"])
        dur = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while not s.heartbeat("recorder").get("saved") and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu = _cpu_s(rec_pid) - cpu0
        dropped = s.heartbeat("recorder").get("dropped", float("nan"))
    finally:
        s.close()
    ep = open_episode(list_episodes(root)[-1])
    out = {
        "duration_s": dur,
        "recorder_cpu_s": cpu,
        "queue_dropped": dropped,
        "disk_bytes": _du(ep.path),
        "episode": ep,
        "streams": {},
    }
    for stream, rate in (("robot_state", 500.0), ("camera/a", 30.0), ("camera/b", 30.0)):
        d = (
            ep.load(stream)
            if stream == "robot_state"
            else {"stamp_ns": ep.array(stream, "stamp_ns")[:], "frame_index": ep.array(stream, "frame_index")[:]}
        )
        n = len(d["stamp_ns"])
        span = (d["stamp_ns"][-1] - d["stamp_ns"][0]) / 1e9 if n > 1 else 0.0
        gaps = int(np.sum(np.diff(d["frame_index"]) - 1)) if "frame_index" in d and n > 1 else 0
        out["streams"][stream] = {
            "expected": rate * dur,
            "written": n,
            "rate_hz": (n - 1) / span if span else 0.0,
            "frame_gaps": gaps,
            "monotonic": bool(np.all(np.diff(d["stamp_ns"]) > 0)),
        }
    raw = sum(ep.array(CameraFrame.topic(c), k).nbytes for c in ("a", "b") for k in ("color", "depth"))
    out["raw_bytes"] = raw + sum(a.nbytes for a in ep.load("robot_state").values())
    return out


def color_codecs(frames: np.ndarray, fps: float, work: Path) -> dict:
    """CPU seconds and bytes for ``frames`` (N, H, W, 3) uint8: zarr/Blosc-lz4 vs PyAV H.264."""
    import av
    import zarr
    from zarr.codecs import BloscCodec

    res = {}
    t = time.process_time()
    a = zarr.create_array(
        str(work / "color.zarr"),
        shape=frames.shape,
        chunks=(30, *frames.shape[1:]),
        dtype=np.uint8,
        compressors=[BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")],
    )
    for i in range(0, len(frames), 30):
        a[i : i + 30] = frames[i : i + 30]
    res["zarr_lz4"] = {"cpu_s": time.process_time() - t, "bytes": _du(work / "color.zarr"), "lossless": True}
    t = time.process_time()
    path = work / "color.mp4"
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=int(round(fps)))
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "18"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    res["h264"] = {"cpu_s": time.process_time() - t, "bytes": path.stat().st_size, "lossless": False}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 s instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    os.environ.setdefault("MUJOCO_GL", "egl")
    work = Path(tempfile.mkdtemp(prefix="rs-bench-record-"))
    try:
        r = live(seconds, work)
        per_min = 60.0 / r["duration_s"]
        print(f"recorded {r['duration_s']:.1f} s: 2 x RGB-D 640x480 @ 30 Hz + robot state @ 500 Hz (live processes)")
        print(f"{'stream':<12} {'expected':>9} {'written':>8} {'rate Hz':>8} {'frame gaps':>10} {'monotonic':>9}")
        for k, v in r["streams"].items():
            print(
                f"{k:<12} {v['expected']:9.0f} {v['written']:8d} {v['rate_hz']:8.1f} {v['frame_gaps']:10d} {str(v['monotonic']):>9}"
            )
        print(f"recorder queue drops: {r['queue_dropped']:.0f}")
        print(
            f"write throughput: raw {r['raw_bytes'] / r['duration_s'] / 1e6:.1f} MB/s -> disk "
            f"{r['disk_bytes'] / r['duration_s'] / 1e6:.1f} MB/s (compression {r['raw_bytes'] / r['disk_bytes']:.1f}x)"
        )
        print(
            f"per minute of demonstration: disk {r['disk_bytes'] * per_min / 1e9:.2f} GB, recorder CPU "
            f"{r['recorder_cpu_s'] * per_min:.1f} s ({100 * r['recorder_cpu_s'] / r['duration_s']:.0f} % of one core)"
        )
        frames = r["episode"].array("camera/a", "color")[: int(30 * min(seconds, 10))]
        c = color_codecs(np.asarray(frames), 30.0, work)
        n_min = len(frames) / 30.0 / 60.0
        print(f"\ncolor storage, one camera, {len(frames)} frames (offline, same run):")
        for k, v in c.items():
            print(
                f"  {k:<9} CPU {v['cpu_s'] / n_min:6.1f} s/min   disk {v['bytes'] / n_min / 1e6:7.1f} MB/min   "
                f"{'lossless' if v['lossless'] else 'lossy'}"
            )
        z, h = c["zarr_lz4"], c["h264"]
        print(f"  ratio H.264/zarr: CPU {h['cpu_s'] / z['cpu_s']:.1f}x, disk {h['bytes'] / z['bytes']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
