"""Camera intrinsics: check reported intrinsics against board captures, or calibrate from scratch.

- :func:`verify_intrinsics`: with the device's K (and distortion), fit the board pose in each
  image (``solvePnP``) and report the reprojection error: wrong intrinsics cannot fit the corners
  of differently tilted boards, so the RMS grows well beyond the ~0.1-0.3 px of a correct model.
- :func:`calibrate_intrinsics`: Zhang's method (``cv2.calibrateCamera``) on ChArUco corners from
  several board views, for cameras that report no intrinsics (UVC webcams).
Source: OpenCV docs, "Camera Calibration" and "Calibration with ArUco and ChArUco".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from robot_stack.calibration.board import BoardNotVisible, BoardSpec, board_pose, detect
from robot_stack.calibration.hand_eye import CalibrationError


@dataclass
class IntrinsicsCheck:
    """Result of checking given intrinsics against board images.

    Attributes:
        rms_px, max_image_rms_px: reprojection error with the given K (all images / worst image).
        focal_error: relative difference of fx, fy between the given K and a calibration from the
            same images (a wrong focal length hides in per-image poses, so it is checked this way).
        principal_point_error_px: distance between the given and the calibrated principal point.
        n_images: images that showed the board.
        ok: all within the tolerances.
    """

    rms_px: float
    max_image_rms_px: float
    focal_error: float
    principal_point_error_px: float
    n_images: int
    ok: bool


def _views(images: list[np.ndarray], board: BoardSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    views = []
    for img in images:
        try:
            views.append(detect(img, board))
        except BoardNotVisible:
            continue
    return views


def verify_intrinsics(
    images: list[np.ndarray],
    K: np.ndarray,
    dist: np.ndarray | None,
    board: BoardSpec,
    max_rms_px: float = 0.5,
    max_focal_error: float = 0.02,
    max_pp_error_px: float = 10.0,
) -> IntrinsicsCheck:
    """Check intrinsics K (3x3, px) and distortion against board images (at least 5 tilted views).

    Raises:
        CalibrationError: fewer than 5 images show the board.
    """
    views = _views(images, board)
    if len(views) < 5:
        raise CalibrationError(f"the board is visible in {len(views)} of {len(images)} images; need at least 5")
    errs, per_image = [], []
    for obj, img in views:
        _, rms = board_pose(obj, img, K, dist)
        per_image.append(rms)
        errs.append(rms**2 * len(obj))
    rms = float(np.sqrt(sum(errs) / sum(len(o) for o, _ in views)))
    K_cal, _, _ = calibrate_intrinsics(images, board)
    focal = float(max(abs(K[0, 0] / K_cal[0, 0] - 1), abs(K[1, 1] / K_cal[1, 1] - 1)))
    pp = float(np.hypot(K[0, 2] - K_cal[0, 2], K[1, 2] - K_cal[1, 2]))
    ok = rms <= max_rms_px and focal <= max_focal_error and pp <= max_pp_error_px
    return IntrinsicsCheck(rms, float(max(per_image)), focal, pp, len(views), ok)


def calibrate_intrinsics(images: list[np.ndarray], board: BoardSpec) -> tuple[np.ndarray, np.ndarray, float]:
    """Full intrinsic calibration.

    Returns:
        K (3, 3), distortion (5,) (k1 k2 p1 p2 k3), RMS reprojection error (px).

    Raises:
        CalibrationError: fewer than 5 usable images.
    """
    views = _views(images, board)
    if len(views) < 5:
        raise CalibrationError(
            f"the board is visible in {len(views)} of {len(images)} images; need at least 5 views at different tilts"
        )
    h, w = images[0].shape[:2]
    rms, K, dist, _, _ = cv2.calibrateCamera([o for o, _ in views], [i for _, i in views], (w, h), None, None)
    return K, dist.ravel()[:5], float(rms)
