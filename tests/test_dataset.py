"""Episode storage: round trip, crash safety (SIGKILL mid-episode), recovery, discard, disk full."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robot_stack.data.dataset import (
    DatasetError,
    EpisodeWriter,
    find_interrupted,
    list_episodes,
    next_index,
    open_episode,
    recover,
)


def _fill(w, n_frames=40, n_states=400, t0=1_000_000_000):
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 255, (n_frames, 24, 32, 3), dtype=np.uint8)
    for i in range(n_states):
        w.add(
            "robot_state",
            t0 + i * 2_000_000,
            q=np.full(7, i, float),
            ee_pose=np.r_[i, 0, 0, 0, 0, 0, 1.0],
            gripper_width=np.float64(0.08),
        )
        if i % 10 == 0 and i // 10 < n_frames:
            k = i // 10
            w.add("camera/scene", t0 + i * 2_000_000, color=colors[k], depth=np.full((24, 32), k, np.uint16))
        if i % 100 == 99:
            w.flush()
    return colors


def test_round_trip_keeps_every_sample_and_stamp(tmp_path):
    w = EpisodeWriter(tmp_path, meta={"task": "reach", "rates_hz": {"arm": 500}})
    colors = _fill(w)
    path = w.close()
    assert path.name == "episode_000000.zarr" and not path.with_name(path.name + ".partial").exists()
    ep = open_episode(path)
    assert ep.meta["task"] == "reach" and ep.meta["status"] == "complete"
    assert ep.meta["rows"] == {"robot_state": 400, "camera/scene": 40}
    rs = ep.load("robot_state")
    assert np.array_equal(rs["q"][:, 0], np.arange(400)) and np.all(np.diff(rs["stamp_ns"]) == 2_000_000)
    cam = ep.load("camera/scene")
    assert np.array_equal(cam["color"], colors) and np.array_equal(cam["depth"][:, 0, 0], np.arange(40))
    assert ep.streams() == ["camera/scene", "robot_state"] and len(ep) == 400
    assert next_index(tmp_path) == 1 and list_episodes(tmp_path) == [path]


def test_shape_change_and_partial_are_clear_errors(tmp_path):
    w = EpisodeWriter(tmp_path)
    w.add("robot_state", 1, q=np.zeros(7))
    w.add("robot_state", 2, q=np.zeros(6))
    with pytest.raises(DatasetError, match="field 'q'"):
        w.flush()
    with pytest.raises(DatasetError, match="interrupted"):
        open_episode(w.path)
    with pytest.raises(DatasetError, match="not a readable episode"):
        open_episode(tmp_path / "nothing.zarr")


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from robot_stack.data.dataset import EpisodeWriter
    root = sys.argv[1]
    w = EpisodeWriter(root, meta={"task": "t"}); w.add("robot_state", 1, q=np.zeros(7)); w.close()  # finished
    w = EpisodeWriter(root, meta={"task": "t"})
    i = 0
    while True:  # killed mid-episode
        w.add("robot_state", 1000 + i, q=np.full(7, i, float), ee_pose=np.zeros(7))
        w.add("camera/c", 1000 + i, color=np.full((48, 64, 3), i % 255, np.uint8))
        i += 1
        if i % 20 == 0:
            w.flush()
            print(i, flush=True)
""")


def test_sigkill_mid_episode_loses_nothing_saved_and_recovers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    flushed = 0
    while flushed < 200:
        flushed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list_episodes(tmp_path)
    assert [p.name for p in finished] == ["episode_000000.zarr"]
    assert len(open_episode(finished[0])) == 1  # the finished episode is untouched
    partial = find_interrupted(tmp_path)
    assert [p.name for p in partial] == ["episode_000001.zarr.partial"]
    path = recover(partial[0])
    ep = open_episode(path)
    assert ep.meta["status"] == "recovered"
    rs, cam = ep.load("robot_state"), ep.load("camera/c")
    n = len(rs["stamp_ns"])
    assert n >= 200 and len(cam["stamp_ns"]) >= 200  # at least everything flushed before the kill
    assert np.array_equal(rs["q"][:, 0], np.arange(n)) and np.all(np.diff(rs["stamp_ns"]) == 1)
    assert all(len(v) == n for v in rs.values())  # every field trimmed to the same complete rows
    assert np.array_equal(cam["color"][:, 0, 0, 0], np.arange(len(cam["color"])) % 255)


def test_recovery_drops_rows_whose_stamps_were_never_written(tmp_path):
    """A kill between an append's resize and its chunk write leaves rows that read as 0."""
    import zarr

    w = EpisodeWriter(tmp_path)
    for i in range(25):
        w.add("robot_state", 1000 + i, q=np.full(7, float(i)))
    w.flush()
    g = zarr.open_group(str(w.path), mode="r+")
    for _, a in g["robot_state"].arrays():  # grow the shape as an append does before its data lands
        a.resize((40, *a.shape[1:]))
    n_written = int(np.count_nonzero(np.asarray(g["robot_state"]["stamp_ns"][:])))
    assert n_written < 40  # the test did make unwritten rows
    ep = open_episode(recover(w.path))
    rs = ep.load("robot_state")
    assert len(rs["stamp_ns"]) == n_written and rs["stamp_ns"].min() > 0
    assert np.array_equal(rs["q"][:, 0], np.arange(n_written))


def test_unrecoverable_partial_is_discarded_with_reason(tmp_path):
    w = EpisodeWriter(tmp_path)
    w.add("camera/c", 1, color=np.zeros((4, 4, 3), np.uint8))
    w.flush()  # no robot state: nothing worth keeping
    assert recover(w.path) is None
    assert (tmp_path / "discarded" / "episode_000000.zarr").is_dir()
    assert list_episodes(tmp_path) == [] and next_index(tmp_path) == 1


def test_discard_moves_aside(tmp_path):
    w = EpisodeWriter(tmp_path)
    w.add("robot_state", 1, q=np.zeros(7))
    dst = w.discard()
    assert dst.parent.name == "discarded" and list_episodes(tmp_path) == []


def test_disk_full_is_a_clear_error_and_earlier_episodes_survive(tmp_path, monkeypatch):
    w = EpisodeWriter(tmp_path)
    w.add("robot_state", 1, q=np.zeros(7))
    first = w.close()
    w = EpisodeWriter(tmp_path)
    w.add("robot_state", 1, q=np.zeros(7))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w, "_append", full)
    with pytest.raises(DatasetError, match="disk full"):
        w.flush()
    assert len(open_episode(first)) == 1
