"""ChArUco calibration boards: specification, detection, board pose (OpenCV ``cv2.aruco``).

Frames: the board frame has its origin at the board's top-left chessboard corner, x along the
squares' columns, y along the rows, z out of the printed side's back (OpenCV's convention for
``CharucoBoard``). Camera frames are OpenCV's (x right, y down, z forward).
Source: OpenCV docs, "Detection of ChArUco Boards" and ``cv2.solvePnP``.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class BoardNotVisible(RobotStackError, RuntimeError):
    """Too few ChArUco corners were found in an image to use it."""


class BoardSpec(BaseModel):
    """A ChArUco board.

    Attributes:
        squares_x, squares_y: number of chessboard squares along x and y.
        square_m: square side, m; marker_m: ArUco marker side, m (< square_m).
        dictionary: OpenCV predefined ArUco dictionary name, e.g. "DICT_5X5_100".
        min_corners: fewest interpolated chessboard corners accepted per image.
    """

    model_config = ConfigDict(extra="forbid")
    squares_x: int = Field(7, ge=3)
    squares_y: int = Field(5, ge=3)
    square_m: float = Field(0.03, gt=0)
    marker_m: float = Field(0.022, gt=0)
    dictionary: str = "DICT_5X5_100"
    min_corners: int = Field(6, ge=4)

    @model_validator(mode="after")
    def _check(self) -> BoardSpec:
        if self.marker_m >= self.square_m:
            raise ValueError("marker_m must be smaller than square_m")
        if not hasattr(cv2.aruco, self.dictionary):
            raise ValueError(f"unknown ArUco dictionary {self.dictionary!r}")
        return self

    @property
    def size_m(self) -> tuple[float, float]:
        """Board width and height, m."""
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    def board(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    def image(self, px_per_square: int = 100, margin_squares: float = 0.5) -> np.ndarray:
        """The printable board (uint8 grayscale) with a white margin of ``margin_squares`` squares."""
        m = int(round(margin_squares * px_per_square))
        w, h = self.squares_x * px_per_square + 2 * m, self.squares_y * px_per_square + 2 * m
        return self.board().generateImage((w, h), marginSize=m, borderBits=1)


def detect(image: np.ndarray, spec: BoardSpec) -> tuple[np.ndarray, np.ndarray]:
    """ChArUco corners in an RGB or gray image.

    Returns:
        object points (N, 3) float32 in the board frame (m) and image points (N, 2) float32 (px).

    Raises:
        BoardNotVisible: fewer than ``spec.min_corners`` corners.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    board = spec.board()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    n = 0 if ids is None else len(ids)
    if n < spec.min_corners:
        raise BoardNotVisible(f"found {n} ChArUco corners, need at least {spec.min_corners}")
    obj, img = board.matchImagePoints(corners, ids)
    return obj.reshape(-1, 3).astype(np.float32), img.reshape(-1, 2).astype(np.float32)


def board_pose(
    obj: np.ndarray, img: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Pose of the board in the camera frame from corner correspondences.

    Returns:
        T_camera_board (4, 4) and the RMS reprojection error (px).
    """
    dist = np.zeros(5) if dist is None else dist
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise BoardNotVisible("solvePnP failed on the detected corners")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, dist, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, dist)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T, rms


def _board_problem(spec: dict) -> str | None:
    """Why a setup's board spec is invalid (None when it is valid): the check the config runs."""
    from pydantic import ValidationError

    from robot_stack.runtime.config import format_validation_error

    try:
        BoardSpec.model_validate(spec)
    except ValidationError as e:
        return " ".join(format_validation_error(e).split())
    return None


def _register() -> None:
    from robot_stack.runtime.config import CalibrationConfig

    CalibrationConfig.board_check = staticmethod(_board_problem)


_register()
