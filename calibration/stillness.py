"""Stillness detection: has the robot stopped moving, to the precision calibration needs?

Calibration samples pair a camera frame with the robot pose. If the arm still creeps while the
frame is captured (joint impedance settling, a servo's final approach), the pair is inconsistent:
in the sim, 0.6 s after the end of a move the TCP still moved enough to leave 0.14 px RMS between
the images and the robot poses (0.06 px after 1.5 s), which the hand-eye solve turned into 2-9 mm
of camera translation error. A fixed wait is either too short on a slow arm or wasted on a fast
one; this waits until the measured pose has stayed inside a tolerance for a whole window.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy.spatial.transform import Rotation


class StillWindow:
    """Feeds on timestamped TCP poses; ``still`` once every pose in the last ``window_s`` lies
    within ``tol_m`` / ``tol_deg`` of the newest and the poses span the whole window.

    Args:
        window_s: how long the pose must hold, s.
        tol_m: translation tolerance, m.
        tol_deg: rotation tolerance, deg.

    Raises:
        ValueError: a non-positive window or tolerance.
    """

    def __init__(self, window_s: float = 0.3, tol_m: float = 5e-5, tol_deg: float = 0.01):
        if window_s <= 0 or tol_m <= 0 or tol_deg <= 0:
            raise ValueError(f"window and tolerances must be > 0 (got {window_s}, {tol_m}, {tol_deg})")
        self.window_ns = int(window_s * 1e9)
        self.tol_m, self.tol_rad = tol_m, np.radians(tol_deg)
        self._poses: deque[tuple[int, np.ndarray]] = deque()

    def reset(self) -> None:
        """Forget all poses (start a new wait)."""
        self._poses.clear()

    def update(self, stamp_ns: int, pose: np.ndarray) -> bool:
        """Add a pose [x y z qx qy qz qw] (base frame, m) measured at ``stamp_ns``; return ``still``.

        A pose older than the newest seen is ignored (duplicate or reordered state)."""
        pose = np.asarray(pose, dtype=float)
        if self._poses and stamp_ns <= self._poses[-1][0]:
            return self.still
        self._poses.append((int(stamp_ns), pose))
        # keep exactly enough history to cover the window
        while len(self._poses) > 1 and stamp_ns - self._poses[1][0] >= self.window_ns:
            self._poses.popleft()
        return self.still

    @property
    def still(self) -> bool:
        """True when the poses cover ``window_s`` and all lie within tolerance of the newest."""
        if len(self._poses) < 2 or self._poses[-1][0] - self._poses[0][0] < self.window_ns:
            return False
        newest = self._poses[-1][1]
        r_new = Rotation.from_quat(newest[3:])
        for _, p in self._poses:
            if np.linalg.norm(p[:3] - newest[:3]) > self.tol_m:
                return False
            if (Rotation.from_quat(p[3:]).inv() * r_new).magnitude() > self.tol_rad:
                return False
        return True
