"""The shared features module: the state vector and point clouds are built the same way in
training (from episodes) and at deploy time (the controller), and the sim scene camera's
calibration is its ground truth."""

import numpy as np
import pytest
import yaml

from robot_stack.control.features import PointCloudSpec, state_vector
from robot_stack.data.dataset import DatasetError, EpisodeWriter
from robot_stack.drivers.camera import pinhole_K

MS = 1_000_000
# a camera 1 m above the table looking straight down (OpenCV axes: z forward = base -z)
T_DOWN = np.array([[1.0, 0, 0, 0.5], [0, -1, 0, 0.0], [0, 0, -1, 1.0], [0, 0, 0, 1]])


def _depth_with_box(K, h=48, w=64, box_px=((20, 28), (28, 36)), box_top_m=0.95):
    """uint16 mm depth: the table (1.0 m away) and a box whose top is ``box_top_m`` away."""
    d = np.full((h, w), 1000, np.uint16)
    (r0, r1), (c0, c1) = box_px
    d[r0:r1, c0:c1] = int(round(box_top_m * 1000))
    return d


def _points_episode(root, calib: dict | None, n_frames=12):
    K = pinhole_K(64, 48, 60.0)
    w = EpisodeWriter(root, meta={"calibration": yaml.safe_dump(calib) if calib is not None else None})
    t0 = 10_000 * MS
    for i in range(int(n_frames / 15 * 250)):
        t = t0 + i * 4 * MS
        w.add(
            "robot_state",
            t,
            q=np.zeros(7),
            dq=np.zeros(7),
            ee_pose=np.r_[0.4 + (t - t0) / 1e9, 0, 0.3, 1, 0, 0, 0],
            gripper_width=np.float64(0.08),
        )
    for k in range(n_frames):
        w.add(
            "camera/scene",
            t0 + k * 66_666_667,
            frame_index=np.int64(k),
            color=np.zeros((48, 64, 3), np.uint8),
            depth=_depth_with_box(K),
        )
    for k in range(n_frames * 10 // 15):
        t = t0 + k * 100 * MS
        w.add(
            "action",
            t,
            target_ns=np.int64(t + 100 * MS),
            pose=np.r_[0.5, 0, 0.3, 1, 0, 0, 0],
            gripper=np.float64(1.0),
            origin=np.int8(1),
        )
    return w.close({"cameras": {"scene": {"K": K.tolist(), "depth_scale": 0.001, "height": 48, "width": 64}}}), K


def test_state_vector():
    s = state_vector(np.tile([0.1, 0.2, 0.3, 0, 0, 0, 1.0], (2, 1)), np.array([0.08, 0.02]))
    assert s.dtype == np.float32 and s.shape == (2, 8)
    np.testing.assert_allclose(s[:, 7], [0.08, 0.02])
    with pytest.raises(ValueError, match="2 poses but 3"):
        state_vector(np.zeros((2, 7)), np.zeros(3))


def test_point_cloud_is_exact_on_synthetic_depth():
    K = pinhole_K(64, 48, 60.0)
    spec = PointCloudSpec(lo=(0.0, -1, 0.01), hi=(1.0, 1, 0.2), n_points=16, stride=1)
    c = spec.clouds(_depth_with_box(K)[None], K, 0.001, T_DOWN)[0]
    assert c.shape == (16, 3) and c.dtype == np.float32
    np.testing.assert_allclose(c[:, 2], 0.05, atol=1e-6)  # only the box top survives the crop (table at z = 0)
    # its pixels' rays at 0.95 m, mapped through T: x = 0.5 + X, y = -Y
    u = np.arange(28, 36) - K[0, 2]
    v = np.arange(20, 28) - K[1, 2]
    assert (
        0.5 + 0.95 * u.min() / K[0, 0] - 1e-6 <= c[:, 0].min()
        and c[:, 0].max() <= 0.5 + 0.95 * u.max() / K[0, 0] + 1e-6
    )
    assert -0.95 * v.max() / K[1, 1] - 1e-6 <= c[:, 1].min() and c[:, 1].max() <= -0.95 * v.min() / K[1, 1] + 1e-6
    with pytest.raises(ValueError, match="T_base_camera"):
        spec.clouds(_depth_with_box(K)[None], K, 0.001, None)


def test_training_builds_the_clouds_the_controller_builds(tmp_path):
    """Points mode: the training clouds of an episode equal the controller's for the same frames
    (features.PointCloudSpec with the frame's K and depth scale, T_base_camera from the calibration
    file recorded with the episode)."""
    from robot_stack.calibration.store import base_camera_extrinsics
    from robot_stack.policies.generative import ModelConfig
    from robot_stack.policies.training import build_samples, point_spec

    calib = {"cameras": {"scene": {"T_base_camera": T_DOWN.tolist()}}}
    path, K = _points_episode(tmp_path / "d", calib)
    ms = ModelConfig(
        cameras={"scene": "points"}, n_points=16, points_lo=(0.0, -1, 0.01), points_hi=(1, 1, 0.2), horizon=8
    )
    s = build_samples([path], ms)
    assert s.frames.shape == (12, 16, 3) and s.frames.dtype == np.float32
    f = tmp_path / "calib.yaml"
    f.write_text(yaml.safe_dump(calib))
    T = base_camera_extrinsics(f)["scene"]
    deploy = point_spec(ms).clouds(_depth_with_box(K)[None], K, 0.001, T)[0]
    np.testing.assert_array_equal(s.frames[0], deploy)
    np.testing.assert_allclose(s.frames[:, :, 2], 0.05, atol=1e-6)
    path2, _ = _points_episode(tmp_path / "e", None)
    with pytest.raises(DatasetError, match="no T_base_camera for camera scene"):
        build_samples([path2], ms)


def test_extrinsics_must_be_rigid(tmp_path):
    from robot_stack.calibration.store import base_camera_extrinsics

    f = tmp_path / "c.yaml"
    bad = T_DOWN.copy()
    bad[0, 0] = 2.0
    f.write_text(yaml.safe_dump({"cameras": {"scene": {"T_base_camera": bad.tolist()}, "wrist": {"latency_s": 0.1}}}))
    with pytest.raises(ValueError, match="cameras.scene.T_base_camera is not a 4x4 rigid"):
        base_camera_extrinsics(f)


def test_points_spec_travels_to_the_controller():
    """A points policy's spec names how to build its cloud; a controller without that camera is
    refused at start-up."""
    from robot_stack.comm.codec import decode, encode
    from robot_stack.policies.generative import GenerativePolicy, GenerativePolicyModel, ModelConfig
    from robot_stack.policies.serving import metadata_from_spec, spec_message, spec_mismatch

    cfg = ModelConfig(
        cameras={"scene": "points"},
        n_points=64,
        points_lo=(0.1, -0.2, 0.0),
        points_hi=(0.9, 0.3, 0.4),
        horizon=8,
        enc_base=4,
        widths=(16, 32),
        kind="meanflow",
        sample_steps=1,
    )
    md = GenerativePolicy(GenerativePolicyModel(cfg), None).metadata
    assert md.obs_shapes["scene.points"] == ((64, 3), "<f4")
    back = metadata_from_spec(decode(encode("", spec_message(md)))[1])
    assert back.points == {"scene": {"lo": [0.1, -0.2, 0.0], "hi": [0.9, 0.3, 0.4], "n_points": 64, "stride": 2}}
    assert PointCloudSpec.from_dict(back.points["scene"]) == PointCloudSpec((0.1, -0.2, 0.0), (0.9, 0.3, 0.4), 64, 2)
    diffs = spec_mismatch(back, None, None, None, ["wrist"])
    assert any("scene.points: the policy needs camera 'scene'" in d for d in diffs)
    assert spec_mismatch(back, None, None, None, ["scene"]) == []


def test_sim_scene_camera_calibration_is_the_ground_truth(tmp_path):
    """configs/calibration/sim_panda_pick.yaml holds the scene camera's true T_base_camera; a cloud
    built with it from a rendered depth image puts the cube where the sim has it."""
    from robot_stack.apps.demo import config_path
    from robot_stack.calibration.store import base_camera_extrinsics
    from robot_stack.drivers.sim_world import SimRenderer, SimWorld, depth_to_mm
    from robot_stack.runtime.config import load_config

    cfg = load_config(config_path("sim_panda_pick.yaml"))
    T = base_camera_extrinsics(cfg.calibration.file)["scene"]
    world = SimWorld(seed=5)
    r = SimRenderer(world, 320, 240)
    try:
        np.testing.assert_allclose(T, r.extrinsics("scene"), atol=1e-8)
        for _ in range(3):
            cube = world.reset()
            _, depth = r.render("scene")
            c = PointCloudSpec().clouds(depth_to_mm(depth)[None], r.intrinsics("scene"), 0.001, T)[0]
            # the cube's top face (4 cm cube on the table; mm depth steps are ~2 mm at 1.5 m), centred on it
            top = c[c[:, 2] > 0.037]
            assert len(top) > 100 and c[:, 2].max() < 0.044
            np.testing.assert_allclose(np.median(top[:, :2], axis=0), cube[:2], atol=0.005)
    finally:
        r.close()
