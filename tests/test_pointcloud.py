"""Point clouds from depth (robot_stack.control.pointcloud): exact on synthetic depth, and against
pyrealsense2's own point cloud on the real D435 recording."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.control.pointcloud import backproject, crop, farthest_point_sampling, transform, workspace_cloud
from conftest import SHARED_DATA, d435_playback

K = np.array([[500.0, 0, 32.0], [0, 400.0, 24.0], [0, 0, 1]])


def test_backprojection_is_exact_on_a_plane():
    depth = np.full((48, 64), 800, np.uint16)  # 0.8 m
    depth[10, 20] = 0  # no depth here
    depth[11, 21] = 12000  # 12 m: beyond max_depth
    pts = backproject(depth, K, 0.001, max_depth_m=10.0)
    assert pts.shape == (48 * 64 - 2, 3) and pts.dtype == np.float32
    v, u = np.mgrid[0:48, 0:64]
    keep = np.ones((48, 64), bool)
    keep[10, 20] = keep[11, 21] = False
    want = np.stack([(u - 32) / 500 * 0.8, (v - 24) / 400 * 0.8, np.full(u.shape, 0.8)], -1)[keep]
    np.testing.assert_allclose(pts, want, atol=1e-6)
    color = np.zeros((48, 64, 3), np.uint8)
    color[..., 1] = 255
    c = backproject(depth, K, 0.001, stride=2, color=color)
    assert c.shape[1] == 6 and np.all(c[:, 4] == 1.0) and len(c) == 24 * 32 - 1  # (10, 20) is on the stride grid
    with pytest.raises(ValueError, match="registered"):
        backproject(depth, K, 0.001, color=color[:10])


def test_transform_and_crop():
    pts = np.array([[1.0, 0, 0, 0.5], [0, 2.0, 0, 0.25]], np.float32)  # an extra column rides along
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    T[:3, 3] = [0.1, 0.2, 0.3]
    out = transform(pts, T)
    np.testing.assert_allclose(out, [[0.1, 1.2, 0.3, 0.5], [-1.9, 0.2, 0.3, 0.25]], atol=1e-6)
    assert crop(out, [-2, 0, 0], [0, 1, 1]).tolist() == [out[1].tolist()]
    with pytest.raises(ValueError, match="lo <= hi"):
        crop(out, [1, 0, 0], [0, 1, 1])


def test_farthest_point_sampling_picks_the_extremes_first():
    line = np.c_[np.arange(11.0), np.zeros(11), np.zeros(11)].astype(np.float32)
    idx = farthest_point_sampling(line, 3)
    assert idx.tolist() == [0, 10, 5]
    assert farthest_point_sampling(line[:4], 6).tolist() == [0, 1, 2, 3, 0, 1]  # short cloud: repeats
    # on a random cloud it spreads the points: the closest pair is farther apart than a random pick's
    rng = np.random.default_rng(0)
    cloud = rng.uniform(-1, 1, (5000, 3)).astype(np.float32)

    def closest_pair(p):
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        return d[np.triu_indices(len(p), 1)].min()

    fps = closest_pair(cloud[farthest_point_sampling(cloud, 128)])
    rnd = closest_pair(cloud[rng.choice(5000, 128, replace=False)])
    assert fps > 3 * rnd


def test_workspace_cloud_keeps_the_object_on_the_table():
    """A camera 1 m above a table (z = 0 in the base frame) looking down at a 10 cm block: the
    workspace box above the table holds only the block's top face."""
    h, w = 240, 320
    Kc = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    depth = np.full((h, w), 1000, np.uint16)  # the table, 1 m away
    depth[100:140, 140:180] = 900  # the block's top, 0.9 m away
    T = np.eye(4)  # camera looks down: optical z = base -z, optical x = base x, optical y = base -y
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = [0.5, 0.0, 1.0]
    cloud, found = workspace_cloud(depth, Kc, 0.001, T, [0.2, -0.3, 0.02], [0.8, 0.3, 0.5], n_points=256, stride=1)
    assert found == 40 * 40 and cloud.shape == (256, 3)
    np.testing.assert_allclose(cloud[:, 2], 0.1, atol=1e-6)  # every point on the block's top, 0.1 m up
    # its extent: 40 px at 0.9 m and 300 px focal length = 0.117 m (less one pixel pitch, 3 mm)
    ext = cloud[:, :2].max(0) - cloud[:, :2].min(0)
    np.testing.assert_allclose(ext, 39 * 0.9 / 300, atol=1e-5)
    empty, n0 = workspace_cloud(depth, Kc, 0.001, T, [5, 5, 5], [6, 6, 6], n_points=8)
    assert n0 == 0 and empty.shape == (8, 3) and not empty.any()


BAG = SHARED_DATA / "realsense_d435_single_frame" / "single_depth_color_640x480.bag"


@functools.cache
def _d435():
    """Raw depth, its intrinsics and scale, and pyrealsense2's own point cloud of it."""
    import pyrealsense2 as rs

    pipe, prof, frames = d435_playback(BAG)
    scale = prof.get_device().first_depth_sensor().get_depth_scale()
    df = frames.get_depth_frame()
    intr = df.profile.as_video_stream_profile().get_intrinsics()
    depth = np.array(df.get_data())
    verts = np.asarray(rs.pointcloud().calculate(df).get_vertices()).view(np.float32).reshape(-1, 3)
    pipe.stop()
    Kd = np.array([[intr.fx, 0, intr.ppx], [0, intr.fy, intr.ppy], [0, 0, 1]])
    return depth, Kd, scale, verts


@pytest.mark.skipif(
    not BAG.is_file(),
    reason=f"recorded D435 data not present at {BAG} (it ships only beside the project's CI checkout)",
)
def test_d435_cloud_matches_pyrealsense2_and_the_documented_scene():
    depth, Kd, scale, verts = _d435()
    assert Kd[0, 0] == pytest.approx(390.43, abs=0.01) and scale == pytest.approx(0.001)
    pts = backproject(depth, Kd, scale)
    valid = depth.reshape(-1) > 0
    # documented: about 93 % valid depth pixels, median 1.48 m
    assert len(pts) == valid.sum() and 0.92 < len(pts) / depth.size < 0.94
    assert np.median(pts[:, 2]) == pytest.approx(1.48, abs=0.01)
    # librealsense's own deprojection of the same frame, point for point
    np.testing.assert_allclose(pts, verts[valid], atol=2e-4)
    # the policy's cloud: 1024 points of the near scene (base = camera here), every one inside the box
    cloud, found = workspace_cloud(depth, Kd, scale, np.eye(4), [-1.0, -1.0, 0.3], [1.0, 1.0, 2.0], n_points=1024)
    assert cloud.shape == (1024, 3) and found > 20_000
    assert cloud[:, 2].min() >= 0.3 and cloud[:, 2].max() <= 2.0 and np.abs(cloud[:, :2]).max() <= 1.0
    assert len(np.unique(cloud, axis=0)) == 1024  # distinct points, spread by FPS
