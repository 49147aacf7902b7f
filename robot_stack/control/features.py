"""Observation features, built once for every layer that needs them.

The controller (at deploy time), training (from episodes) and the LeRobot export all build the
policy's inputs here, so the two ends cannot drift apart:

- :func:`state_vector`: the proprioceptive state ``[x y z qx qy qz qw gripper_width]``;
- :func:`camera_images`: camera images resized to the model's size (OpenCV INTER_AREA);
- :class:`PointCloudSpec`: the DP3/MP1 point cloud of a depth camera in the robot base frame
  (back-projection with K and the depth scale, the calibrated ``T_base_camera``, a workspace crop,
  farthest-point sampling: :mod:`robot_stack.control.pointcloud`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_stack.control.observation import resize_images
from robot_stack.control.pointcloud import workspace_cloud

STATE_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper_width")


def state_vector(ee_pose: np.ndarray, gripper_width: np.ndarray) -> np.ndarray:
    """The state vector (T, 8) float32 from TCP poses (T, 7) [x y z qx qy qz qw] (base frame, m)
    and gripper openings (T,) m; names in :data:`STATE_NAMES`."""
    ee = np.asarray(ee_pose, np.float32).reshape(-1, 7)
    g = np.asarray(gripper_width, np.float32).reshape(-1, 1)
    if len(ee) != len(g):
        raise ValueError(f"{len(ee)} poses but {len(g)} gripper widths")
    return np.concatenate([ee, g], axis=1)


def camera_images(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(T, h, w[, c]) images resized to ``size`` (h, w) (None: unchanged), as the model sees them."""
    return resize_images(images, size)


@dataclass(frozen=True)
class PointCloudSpec:
    """How a model's point cloud is built from one depth camera.

    Attributes:
        lo, hi: (3,) workspace box in the base frame, m (points outside are dropped: table edge,
            the robot's base, the background).
        n_points: N, points per cloud after farthest-point sampling.
        stride: pixel stride of the back-projection (2: every other row and column).
    """

    lo: tuple[float, float, float] = (0.25, -0.35, 0.003)
    hi: tuple[float, float, float] = (0.75, 0.40, 0.30)
    n_points: int = 512
    stride: int = 2

    def clouds(self, depth: np.ndarray, K: np.ndarray, depth_scale: float, T_base_camera: np.ndarray) -> np.ndarray:
        """Point clouds (T, N, 3) float32 in the base frame, m, from depth images (T, H, W) uint16
        with intrinsics ``K`` (3, 3), ``depth_scale`` m per unit and extrinsics ``T_base_camera``
        (4, 4; maps camera-frame points (OpenCV axes) into the base frame).

        Raises:
            ValueError: no extrinsics (the camera is not calibrated) or a depth of the wrong rank.
        """
        if T_base_camera is None:
            raise ValueError("a point cloud needs the camera's T_base_camera (hand-eye calibration)")
        d = np.asarray(depth)
        if d.ndim != 3:
            raise ValueError(f"depth must be (T, H, W), got {d.shape}")
        T = np.asarray(T_base_camera, float)
        return np.stack(
            [workspace_cloud(x, K, depth_scale, T, self.lo, self.hi, self.n_points, stride=self.stride)[0] for x in d]
        ).astype(np.float32)

    def to_dict(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi), "n_points": self.n_points, "stride": self.stride}

    @staticmethod
    def from_dict(d: dict) -> PointCloudSpec:
        return PointCloudSpec(
            tuple(map(float, d["lo"])), tuple(map(float, d["hi"])), int(d["n_points"]), int(d.get("stride", 2))
        )


def actions_at(target_ns: np.ndarray, poses: np.ndarray, gripper: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """The executed action stream at ``times_ns``: (T, 8) [x y z qx qy qz qw gripper].

    Rows sharing a target time keep the one sent last; outside the span the first/last action is held.
    """
    from scipy.spatial.transform import Rotation, Slerp

    order = np.argsort(target_ns, kind="stable")
    t, p, g = target_ns[order], poses[order], gripper[order]
    keep = np.r_[t[1:] != t[:-1], True]  # last sent per target time
    t, p, g = t[keep].astype(np.float64), p[keep], g[keep]
    q = np.clip(times_ns.astype(np.float64), t[0], t[-1])
    pos = np.stack([np.interp(q, t, p[:, j]) for j in range(3)], axis=1)
    rot = np.repeat(p[:1, 3:], len(q), 0) if len(t) == 1 else Slerp(t, Rotation.from_quat(p[:, 3:]))(q).as_quat()
    return np.concatenate([pos, rot, np.interp(q, t, g)[:, None]], axis=1)


#: the names of one arm's action values, in the order of the action vector (LeRobot ``names``)
ACTION_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper_open")


def feature_names(arms: list[str], names) -> list[str]:
    """Per-arm feature names: ``names`` as they are for one arm, else ``<arm>_<name>`` per arm in
    order, the arm node's ``arm_`` prefix left out (``arm_left`` -> ``left_x``), as in the LeRobot
    export's ``names``."""
    if len(arms) <= 1:
        return list(names)
    return [f"{a.removeprefix('arm_')}_{n}" for a in arms for n in names]


def action_names(arms: list[str]) -> list[str]:
    """The names of a chunk's action dimensions for these arms (8 per arm, :data:`ACTION_NAMES`)."""
    return feature_names(arms, ACTION_NAMES)
