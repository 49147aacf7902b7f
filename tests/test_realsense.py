"""RealSense driver against a real D435 recording (shared test data)."""

import functools
import time

import numpy as np
import pytest
from robot_stack.testing.setups import node, setup, write_setup

from robot_stack.runtime.clock import DeviceClockMapper

from conftest import SHARED_DATA, d435_playback

BAG = SHARED_DATA / "realsense_d435_single_frame" / "single_depth_color_640x480.bag"
needs_bag = pytest.mark.skipif(
    not BAG.is_file(),
    reason=f"recorded D435 data not present at {BAG} (it ships only beside the project's CI checkout)",
)


@functools.cache
def reference_frames():
    """What pyrealsense2 itself reports for the file: intrinsics, scale, aligned pixels (read once
    per session, :func:`conftest.d435_playback`)."""
    import pyrealsense2 as rs

    pipe, prof, frames = d435_playback(BAG)
    scale = prof.get_device().first_depth_sensor().get_depth_scale()
    intr = prof.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
    raw_depth = np.array(frames.get_depth_frame().get_data())
    al = rs.align(rs.stream.color).process(frames)
    color = np.array(al.get_color_frame().get_data())
    depth = np.array(al.get_depth_frame().get_data())
    pipe.stop()
    return scale, intr, color, depth, raw_depth


@needs_bag
def test_driver_matches_pyrealsense2_on_recorded_d435():
    from robot_stack.drivers.realsense import RealSenseCamera

    scale, intr, color_ref, depth_ref, raw_depth = reference_frames()
    cam = RealSenseCamera(playback_file=str(BAG), loop=True)
    cam.start()
    try:
        assert cam.serial_number == "728612070259"
        assert cam.depth_scale == pytest.approx(0.001, rel=1e-6) and cam.depth_scale == pytest.approx(scale)
        # color intrinsics as the data README lists them
        assert cam.K[0, 0] == pytest.approx(613.20, abs=0.01) and cam.K[1, 1] == pytest.approx(613.42, abs=0.01)
        assert cam.K[0, 2] == pytest.approx(319.94, abs=0.01) and cam.K[1, 2] == pytest.approx(239.18, abs=0.01)
        assert cam.K[0, 0] == pytest.approx(intr.fx) and cam.K[1, 2] == pytest.approx(intr.ppy)
        frames = [_read_one(cam) for _ in range(3)]  # the single frameset loops
    finally:
        cam.stop()
    for f in frames:
        assert f is not None
        assert f.color.shape == (480, 640, 3) and f.depth.shape == (480, 640)  # depth on the color grid
        assert np.array_equal(f.color, color_ref)
        assert np.array_equal(f.depth, depth_ref)
    valid = depth_ref[depth_ref > 0]
    assert np.median(valid) * cam.depth_scale == pytest.approx(1.48, abs=0.1)
    assert np.median(raw_depth[raw_depth > 0]) == pytest.approx(np.median(valid), rel=0.05)
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # looping keeps capture stamps increasing
    # the one-frame recording looped: it plays as one continuous device, not a frozen, restarted one
    assert cam.playback_loops >= 2
    assert [f.frame_index for f in frames] == list(range(frames[0].frame_index, frames[0].frame_index + 3))
    period = int(1e9 / cam.fps)
    assert np.diff([f.device_stamp_ns for f in frames]).tolist() == [period, period]


def test_missing_recording_is_a_clear_error(tmp_path):
    from robot_stack.drivers.realsense import RealSenseCamera, RealSenseError

    with pytest.raises(RealSenseError, match="does not exist"):
        RealSenseCamera(playback_file=str(tmp_path / "nope.bag")).start()


def test_device_clock_mapper_min_delay_and_resets():
    m = DeviceClockMapper(window=10)
    # device clock 1000 ns behind the host plus variable delay 50..500 ns
    delays = [500, 200, 50, 300, 400]
    out = [m.map(d * 10_000, d * 10_000 + 1000 + dl) for d, dl in zip(range(1, 6), delays)]
    # after the 50 ns sample the offset is 1050: stamps = device + 1050, never after receive
    assert out[2] == 30_000 + 1050 and out[3] == 40_000 + 1050 and out[4] == 50_000 + 1050
    assert out[0] == 10_000 + 1500  # first sample: only its own delay is known
    # the device clock jumps back (looping recording): estimate restarts
    assert m.map(5_000, 10**9) == 10**9 and m.resets == 1


@needs_bag
def test_camera_node_publishes_recorded_frames(tmp_path, run_dir):
    """The RealSense camera node in its own process, playing the recording, seen over a socket."""
    from robot_stack.runtime.config import load_config
    from robot_stack.comm.transport import Subscriber

    from conftest import launched

    cfg_path = tmp_path / "rs.yaml"
    write_setup(
        cfg_path,
        setup(
            "rs",
            run_dir,
            cam=node("camera", driver={"type": "realsense", "playback_file": str(BAG)}, camera_id="d435", rate_hz=6),
        ),
    )

    _, _, color_ref, depth_ref, _ = reference_frames()  # before the node plays the same file
    with launched(cfg_path) as (_, out):
        sub = Subscriber([load_config(cfg_path).pub_endpoint("cam", run_dir)], ("camera/",))
        try:
            got = []
            for _ in range(3):  # the looping one-frame recording keeps publishing (it is not a frozen camera)
                f = sub.wait_for("camera/d435", 30, newer_than_seq=got[-1].seq if got else -1)
                assert f is not None, out.tail()
                got.append(f)
            for f in got:
                assert np.array_equal(f.color, color_ref) and np.array_equal(f.depth, depth_ref)
                assert f.K[0, 0] == pytest.approx(613.2037, abs=1e-3) and f.depth_scale == pytest.approx(0.001)
            assert np.all(np.diff([f.frame_index for f in got]) > 0)
            assert "jumped" not in out.tail() and "delivered again" not in out.tail()
        finally:
            sub.close()


def _read_one(cam, timeout_s: float = 30.0):
    """The next frame, reading as the camera node does (short reads; the driver restarts stalls)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        f = cam.read(1.0)
        if f is not None:
            return f
    return None


@needs_bag
def test_stalled_playback_is_restarted():
    """A looping playback that stops delivering is restarted, and frames come again."""
    from robot_stack.runtime.clock import now_ns
    from robot_stack.drivers.realsense import RealSenseCamera

    cam = RealSenseCamera(playback_file=str(BAG), loop=True)
    cam.start()
    try:
        assert _read_one(cam) is not None

        class Stalled:  # the pipeline as a stalled playback answers
            def __init__(self, pipe):
                self.stop = pipe.stop

            def try_wait_for_frames(self, ms):
                return False, None

        cam._pipe = stalled = Stalled(cam._pipe)
        cam._last_frame_ns = now_ns() - int(1e9)  # stalled for 1 s: not yet restarted
        assert cam.read(0.01) is None and cam.playback_restarts == 0 and cam._pipe is stalled
        cam._last_frame_ns = now_ns() - int(3e9)  # past PLAYBACK_STALL_S
        assert cam.read(0.01) is None and cam.playback_restarts == 1 and cam._pipe is not stalled
        assert _read_one(cam) is not None  # the restarted playback delivers
    finally:
        cam.stop()
