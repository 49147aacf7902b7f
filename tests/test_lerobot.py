"""LeRobot export (v3.0) and import (v2.1 real data, v3.0 round trip)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from robot_stack.data.dataset import list_episodes, open_episode
from robot_stack.data.lerobot import LeRobotError, export_lerobot, import_lerobot

from conftest import SHARED_DATA
from test_training import make_episode

G1 = SHARED_DATA / "lerobot_v21_unitree_g1"


@pytest.mark.skipif(
    not G1.is_dir(), reason=f"real LeRobot v2.1 data not found at {G1} (it ships with CI's shared folder)"
)
def test_import_real_v21_unitree_g1(tmp_path):
    paths = import_lerobot(G1, tmp_path)
    assert [open_episode(p).meta["source_episode_index"] for p in paths] == [1, 2, 4]
    for p, rows in zip(paths, (393, 343, 357)):
        ep = open_episode(p)
        assert ep.meta["task"] == "Pick up the yellow bottle on the table." and ep.meta["source"] == "lerobot v2.1"
        assert ep.meta["features"]["action"][0][0] == "kLeftShoulderPitch"
        # the 26-D layout, named per arm and hand: 7 joints per arm, then 6 per hand
        for key in ("observation.state", "action"):
            assert ep.meta["layout"][key] == {
                "left_arm": list(range(0, 7)),
                "right_arm": list(range(7, 14)),
                "left_hand": list(range(14, 20)),
                "right_hand": list(range(20, 26)),
            }
        src = pq.read_table(G1 / "data" / "chunk-000" / f"episode_{ep.meta['source_episode_index']:06d}.parquet")
        rs, act = ep.load("robot_state"), ep.load("action")
        assert len(rs["q"]) == rows and rs["q"].shape[1] == 26
        np.testing.assert_array_equal(rs["q"], np.stack(src.column("observation.state").to_numpy(zero_copy_only=False)))
        np.testing.assert_array_equal(act["value"], np.stack(src.column("action").to_numpy(zero_copy_only=False)))
        assert np.all(np.diff(rs["stamp_ns"]) > 0) and np.all(
            np.abs(np.diff(rs["stamp_ns"]) - 33_333_333) < 2_000
        )  # float32 timestamps
        color = ep.array("camera/cam_high", "color")
        assert color.shape == (rows, 480, 640, 3)
        assert 20 < float(np.asarray(color[rows // 2]).mean()) < 235  # a decoded picture, not a blank frame


def test_export_v30_and_round_trip(tmp_path):
    eps = [make_episode(tmp_path / "native", seed=i) for i in range(2)]
    out = export_lerobot(eps, tmp_path / "lr", fps=10)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2 and info["fps"] == 10
    assert info["features"]["observation.images.wrist"]["shape"] == [48, 64, 3]
    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert data.num_rows == info["total_frames"] == 40  # 2 x (2 s at 10 fps)
    ep_t = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["length"] for e in ep_t] == [20, 20] and ep_t[1]["dataset_from_index"] == 20
    assert ep_t[1]["videos/observation.images.wrist/from_timestamp"] == pytest.approx(2.0)
    state = np.stack(data.column("observation.state").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(state[:20, 0], np.arange(20) * 0.1, atol=1e-5)  # x = t in the synthetic episode
    action = np.stack(data.column("action").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(action[1:19, 0], np.arange(1, 19) * 0.1 + 0.0, atol=1e-5)  # x_cmd(t) = t
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["observation.state"]["count"] == [40] and len(stats["observation.images.wrist"]["mean"]) == 3
    back = import_lerobot(out, tmp_path / "back")
    assert len(back) == 2
    ep = open_episode(back[1])
    np.testing.assert_allclose(ep.load("robot_state")["q"], state[20:])
    frames = ep.array("camera/wrist", "color")[:]
    src = open_episode(eps[1]).array("camera/wrist", "color")[:]
    assert frames.shape == (20, 48, 64, 3)
    # H.264 (yuv420p) is lossy and the synthetic frames are noise: frame k of the export must still be
    # nearer the source frame it was made from (grid time k * 0.1 s -> camera frame 1.5 k) than its neighbours
    for k in (0, 4, 10):
        d = [np.abs(frames[k].astype(int) - src[j]).mean() for j in range(len(src))]
        assert int(np.argmin(d)) == int(np.argmin(np.abs(np.arange(len(src)) / 15 - k / 10)))
    with pytest.raises(LeRobotError, match="exists"):
        export_lerobot(eps, out)
    assert list_episodes(tmp_path / "back") == back


def test_export_meets_lerobots_reader(tmp_path):
    """What lerobot 0.4.4 tripped over in our earlier export: the task index, whole-number fps,
    quantile statistics, per-episode image statistics, and a video keyframe interval."""
    import av

    eps = [make_episode(tmp_path / "native", seed=i) for i in range(2)]
    with pytest.raises(LeRobotError, match="whole-number frame rate"):
        export_lerobot(eps, tmp_path / "bad", fps=7.5)
    assert not (tmp_path / "bad").exists()
    out = export_lerobot(eps, tmp_path / "lr", fps=10.0)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["fps"] == 10 and isinstance(info["fps"], int)
    # tasks.parquet: pandas reads the task string as the index (LeRobot's tasks.iloc[i].name)
    t = pq.read_table(out / "meta" / "tasks.parquet")
    pandas_meta = json.loads(t.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["task"] and t.column("task").to_pylist() == [
        open_episode(eps[0]).meta.get("task", "")
    ]
    assert t.column("task_index").to_pylist() == [0]
    # quantiles, global and per episode, for state, action and images
    stats = json.loads((out / "meta" / "stats.json").read_text())
    state = np.stack(
        pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
        .column("observation.state")
        .to_numpy(zero_copy_only=False)
    )
    s64 = state.astype(np.float64)
    for q, v in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):  # per episode (inverted CDF), count-weighted
        per_ep = [np.quantile(s64[k : k + 20], v, axis=0, method="inverted_cdf") for k in (0, 20)]
        np.testing.assert_allclose(stats["observation.state"][q], np.mean(per_ep, axis=0), atol=1e-6)
    assert np.array(stats["observation.images.wrist"]["q99"]).shape == (3, 1, 1)
    ep_t = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert np.array(ep_t[0]["stats/observation.images.wrist/mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(
        ep_t[1]["stats/observation.state/q50"], np.quantile(s64[20:], 0.5, axis=0, method="inverted_cdf"), atol=1e-6
    )
    # a keyframe every 2 frames: random access never decodes more than 2
    with av.open(str(out / "videos" / "observation.images.wrist" / "chunk-000" / "file-000.mp4")) as c:
        keys = [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size]
    assert len(keys) == 40 and sum(keys) >= 20


def test_import_without_videos_and_other_formats(tmp_path):
    eps = [make_episode(tmp_path / "native", seed=i) for i in range(2)]
    out = export_lerobot(eps, tmp_path / "lr", fps=10)
    (out / "videos" / "observation.images.wrist" / "chunk-000" / "file-000.mp4").unlink()
    with pytest.raises(LeRobotError, match="video of episode 0 is missing .*without --require-videos"):
        import_lerobot(out, tmp_path / "strict", require_videos=True)
    lines = []
    back = import_lerobot(out, tmp_path / "tabular", log=lines.append)
    assert len(back) == 2 and len(lines) == 2 and "video observation.images.wrist missing" in lines[0]
    ep = open_episode(back[0])
    assert ep.meta["skipped_videos"] == ["observation.images.wrist"]
    assert "camera/wrist" not in ep.streams() and len(ep.load("robot_state")["q"]) == 20
    rlds = tmp_path / "bridge" / "1.0.0"
    rlds.mkdir(parents=True)
    (rlds / "bridge-train.tfrecord-00000-of-00001").write_bytes(b"\0" * 16)
    (rlds / "dataset_info.json").write_text("{}")
    with pytest.raises(LeRobotError, match="RLDS / Open X-Embodiment .* reads LeRobot v2.1 and v3.0"):
        import_lerobot(rlds, tmp_path / "x")
    with pytest.raises(LeRobotError, match="RLDS"):
        import_lerobot(tmp_path / "bridge", tmp_path / "x")


def make_bimanual_episode(root, n_frames=30, seed=0):
    """Two arms (nodes arm_left, arm_right) at 250 Hz: left x = t, right y = -t (m, t in s);
    each arm's actions at 10 Hz lead its state by 0.1 s; a top camera at 15 Hz."""
    from robot_stack.data.dataset import EpisodeWriter

    ms = 1_000_000
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root, meta={"robots": [{"arm_node": "arm_left"}, {"arm_node": "arm_right"}]})
    t0 = 10_000 * ms
    pose = {
        "arm_left": lambda s: np.r_[s, 0.2, 0.3, 1, 0, 0, 0],
        "arm_right": lambda s: np.r_[0.5, -s, 0.4, 0, 1, 0, 0],
    }
    grip = {"arm_left": 0.08, "arm_right": 0.02}
    for i in range(int(n_frames / 15 * 250)):
        t = t0 + i * 4 * ms
        for a in pose:
            w.add(
                f"robot_state/{a}",
                t,
                q=np.zeros(7),
                dq=np.zeros(7),
                ee_pose=pose[a]((t - t0) / 1e9),
                gripper_width=np.float64(grip[a]),
            )
    for k in range(n_frames):
        w.add(
            "camera/top",
            t0 + k * 66_666_667,
            frame_index=np.int64(k),
            color=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
        )
    for k in range(n_frames * 10 // 15):
        t = t0 + k * 100 * ms
        for a in pose:
            w.add(
                f"action/{a}",
                t,
                target_ns=np.int64(t + 100 * ms),
                pose=pose[a]((t - t0) / 1e9 + 0.1),
                gripper=np.float64(1.0 if a == "arm_left" else 0.0),
                origin=np.int8(0),
            )
    return w.close()


def test_bimanual_export_names_each_arm_and_imports_back_identically(tmp_path):
    ep_path = make_bimanual_episode(tmp_path / "native")
    out = export_lerobot([ep_path], tmp_path / "lr", fps=10, robot_type="bimanual_panda_sim")
    info = json.loads((out / "meta" / "info.json").read_text())
    names = info["features"]["observation.state"]["names"]
    assert info["features"]["observation.state"]["shape"] == [16] and info["features"]["action"]["shape"] == [16]
    assert names[:3] == ["left_x", "left_y", "left_z"] and names[8:11] == ["right_x", "right_y", "right_z"]
    assert names[7] == "left_gripper_width" and info["features"]["action"]["names"][15] == "right_gripper_open"
    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    state = np.stack(data.column("observation.state").to_numpy(zero_copy_only=False))
    action = np.stack(data.column("action").to_numpy(zero_copy_only=False))
    t = np.arange(len(state)) * 0.1
    np.testing.assert_allclose(state[:, 0], t, atol=1e-5)  # left x = t
    np.testing.assert_allclose(state[:, 9], -t, atol=1e-5)  # right y = -t
    np.testing.assert_allclose(state[:, [7, 15]], np.broadcast_to([0.08, 0.02], (len(t), 2)), atol=1e-6)
    np.testing.assert_allclose(action[1:-1, 0], t[1:-1], atol=1e-5)  # left x_cmd(t) = t
    np.testing.assert_allclose(action[1:-1, 9], -t[1:-1], atol=1e-5)
    np.testing.assert_allclose(action[:, [7, 15]], np.broadcast_to([1.0, 0.0], (len(t), 2)))
    back = import_lerobot(out, tmp_path / "back")
    ep = open_episode(back[0])
    q = ep.load("robot_state")["q"]
    np.testing.assert_array_equal(q[:, :8], state[:, :8])  # each arm's values, unchanged
    np.testing.assert_array_equal(q[:, 8:], state[:, 8:])
    assert ep.meta["features"]["observation.state"] == names
    assert ep.meta["layout"]["observation.state"] == {
        "left_arm": list(range(7)),
        "left_gripper": [7],
        "right_arm": list(range(8, 15)),
        "right_gripper": [15],
    }
    one = make_episode(tmp_path / "one", seed=3)  # a one-arm episode does not join a two-arm dataset
    with pytest.raises(LeRobotError, match="one dataset, one layout"):
        export_lerobot([ep_path, one], tmp_path / "mixed", fps=10)


def test_a_two_arm_episode_knows_its_arms_and_length(tmp_path):
    from robot_stack.data.dataset import DatasetError, episode_arms

    ep = open_episode(make_bimanual_episode(tmp_path / "bi"))
    assert episode_arms(ep) == ["arm_left", "arm_right"] and len(ep) == len(ep.load("robot_state/arm_left")["stamp_ns"])
    assert episode_arms(open_episode(make_episode(tmp_path / "one"))) == [""]
    ep.meta["robots"] = []  # no order: refused by name, not guessed
    with pytest.raises(DatasetError, match="no arm order"):
        episode_arms(ep)
