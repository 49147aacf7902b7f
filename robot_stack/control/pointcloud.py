"""Point clouds from depth images, as the DP3 / MP1 observation: back-project, move into the robot
base frame, crop to the workspace, subsample by farthest-point sampling.

One function per step and :func:`workspace_cloud` for the whole chain, so training and deployment
build the cloud with the same code. Frames: the camera's optical frame (x right, y down, z forward,
m), the robot base frame through the calibrated extrinsics ``T_base_camera`` (4x4, maps camera
points to base points, from hand-eye calibration).

Sources: the pinhole model (Hartley & Zisserman, ch. 6; librealsense's ``rs2_deproject_pixel_to_point``
without distortion, which is the D435 depth stream's model); farthest-point sampling as in
PointNet++ (Qi et al. 2017) and DP3 (Ze et al. 2024, which crops, then samples 512-1024 points).
"""

from __future__ import annotations

import numpy as np


def backproject(
    depth: np.ndarray,
    K: np.ndarray,
    depth_scale: float,
    max_depth_m: float = 10.0,
    stride: int = 1,
    color: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels with a valid depth as 3-D points in the camera's optical frame.

    Args:
        depth: (h, w) uint16 raw depth (0 = no depth).
        K: (3, 3) intrinsics of the depth image (fx, fy, cx, cy in pixels).
        depth_scale: metres per depth unit (D435: 0.001).
        max_depth_m: points farther than this are dropped (m).
        stride: use every ``stride``-th pixel in both directions (cheaper clouds).
        color: optional (h, w, 3) uint8 image registered to ``depth``: then each row is
            [x y z r g b] with r, g, b in [0, 1].
    Returns:
        (N, 3) or (N, 6) float32, x right, y down, z forward, m; row-major pixel order.
    Raises:
        ValueError: depth not 2-D, K not 3x3, a color image of another size.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (h, w), got {depth.shape}")
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got {K.shape}")
    if color is not None and np.asarray(color).shape[:2] != depth.shape:
        raise ValueError(f"color {np.asarray(color).shape} is not registered to depth {depth.shape}")
    h, w = depth.shape
    v, u = np.mgrid[0:h:stride, 0:w:stride]
    z = depth[::stride, ::stride].astype(np.float64) * depth_scale
    ok = (z > 0) & (z <= max_depth_m)
    z, u, v = z[ok], u[ok], v[ok]
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    pts = np.stack([x, y, z], 1).astype(np.float32)
    if color is not None:
        rgb = np.asarray(color)[::stride, ::stride][ok].astype(np.float32) / 255.0
        pts = np.concatenate([pts, rgb], 1)
    return pts


def transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Points (N, 3+) moved by the 4x4 transform ``T`` (the first 3 columns; extra columns kept)."""
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T must be 4x4, got {T.shape}")
    out = np.array(points, np.float32, copy=True)
    out[:, :3] = (points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
    return out


def crop(points: np.ndarray, lo, hi) -> np.ndarray:
    """The points inside the axis-aligned box [lo, hi] (3 each, m, same frame as the points)."""
    lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi < lo):
        raise ValueError(f"crop box must be two 3-vectors with lo <= hi, got {lo}, {hi}")
    inside = np.all((points[:, :3] >= lo) & (points[:, :3] <= hi), axis=1)
    return points[inside]


def farthest_point_sampling(points: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Indices of ``n`` points chosen greedily, each the farthest (Euclidean, on xyz) from those
    chosen before, from ``start``. O(N n). Fewer than ``n`` points: all of them, then repeats
    from the start (so the output has a fixed size; DP3 does the same for short clouds).

    Returns:
        (n,) int64 indices into ``points``.
    Raises:
        ValueError: an empty cloud or n < 1.
    """
    m = len(points)
    if m == 0 or n < 1:
        raise ValueError(f"farthest-point sampling needs points and n >= 1, got {m} points, n={n}")
    if m <= n:
        return np.resize(np.arange(m), n).astype(np.int64)
    xyz = np.asarray(points[:, :3], np.float32)
    idx = np.empty(n, np.int64)
    idx[0] = start
    d = np.sum((xyz - xyz[start]) ** 2, axis=1)
    for k in range(1, n):
        idx[k] = int(np.argmax(d))
        np.minimum(d, np.sum((xyz - xyz[idx[k]]) ** 2, axis=1), out=d)
    return idx


def workspace_cloud(
    depth: np.ndarray,
    K: np.ndarray,
    depth_scale: float,
    T_base_camera: np.ndarray,
    lo,
    hi,
    n_points: int = 1024,
    color: np.ndarray | None = None,
    stride: int = 2,
    max_candidates: int = 20_000,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """The policy's point cloud: back-project, move into the base frame, crop to [lo, hi], then
    ``n_points`` by farthest-point sampling (after a uniform random pre-subsample to at most
    ``max_candidates`` points, which bounds the cost; seeded, so deterministic).

    Returns:
        (cloud (n_points, 3 or 6) float32 in the base frame, m; the number of points in the box
        before sampling). An empty box gives zeros and 0.
    """
    pts = crop(transform(backproject(depth, K, depth_scale, stride=stride, color=color), T_base_camera), lo, hi)
    found = len(pts)
    if found == 0:
        return np.zeros((n_points, 3 if color is None else 6), np.float32), 0
    if found > max_candidates:
        pts = pts[np.sort(np.random.default_rng(seed).choice(found, max_candidates, replace=False))]
    return pts[farthest_point_sampling(pts, n_points)], found
