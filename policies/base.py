"""Policy interface.

A policy maps an observation window (the last To observations per key) to an action chunk of H
actions. Its :class:`PolicyMetadata` says what it needs and what it returns, so the policy node
can reject malformed requests before they reach the model and the controller knows the timing.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class ObservationError(RobotStackError, ValueError):
    """An observation window does not match the policy's metadata (wrong keys, shapes, dtypes)."""


@dataclass(frozen=True)
class PolicyMetadata:
    """What a policy consumes and produces.

    Attributes:
        obs_shapes: key -> (shape without the leading To axis, dtype str), e.g.
            {"ee_pose": ((7,), "<f4"), "scene.color": ((240, 320, 3), "|u1")}.
        obs_horizon: To.
        horizon: H.
        action_dim: D.
        action_space: meaning of an action, e.g. "ee_pose+gripper" ([x y z qx qy qz qw g]).
        dt: control period the policy was trained at, s.
        offset: step index of action 0 relative to the newest observation.
        supports_prefix: the policy can inpaint after a committed prefix (RTC).
        norm_stats: normalization statistics (for checkpoints; informational here).
        points: camera id -> point-cloud settings (``PointCloudSpec.to_dict()``) of the
            ``<camera>.points`` keys: the observation builder makes the cloud with them.
        action_names: the name of each action dimension, in order (``control.features.action_names``);
            empty: the policy names none (the controller then needs matching dimensions, and warns).
    """

    obs_shapes: dict[str, tuple[tuple[int, ...], str]]
    obs_horizon: int
    horizon: int
    action_dim: int
    action_space: str
    dt: float
    offset: int = 0
    supports_prefix: bool = False
    norm_stats: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    action_names: tuple[str, ...] = ()

    def validate(self, obs: dict[str, np.ndarray]) -> None:
        """Raise :class:`ObservationError` naming the first mismatch."""
        missing = self.obs_shapes.keys() - obs.keys()
        extra = obs.keys() - self.obs_shapes.keys()
        if missing or extra:
            raise ObservationError(f"observation keys: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for k, (shape, dtype) in self.obs_shapes.items():
            a = obs[k]
            want = (self.obs_horizon, *shape)
            if a.shape != want:
                raise ObservationError(f"{k}: shape {a.shape}, expected {want}")
            if a.dtype.str != dtype:
                raise ObservationError(f"{k}: dtype {a.dtype.str}, expected {dtype}")


class Policy(ABC):
    """A visuomotor policy."""

    metadata: PolicyMetadata
    #: d, the committed actions the last chunk followed (-1: none); set by ``predict``
    last_frozen: int = -1

    @abstractmethod
    def predict(
        self, obs: dict[str, np.ndarray], committed_prefix: np.ndarray | None = None, frozen: int | None = None
    ) -> np.ndarray:
        """Action chunk (H, action_dim) float32 for a validated observation window.

        Args:
            obs: key -> (To, ...) arrays as in the metadata.
            committed_prefix: (k, action_dim) the previous chunk's actions over this chunk's first
                k indices (RTC), or None.
            frozen: d <= k: the first d of them are committed (the arm executes them whatever this
                chunk says), the rest is guidance over the overlap; None: all k are committed.
        """

    def predict_batch(
        self,
        obs: list[dict[str, np.ndarray]],
        committed_prefixes: list[np.ndarray | None] | None = None,
        frozens: list[int | None] | None = None,
    ) -> list[tuple[np.ndarray, int]]:
        """Answer B requests at once (dynamic batching): per request, the chunk (H, action_dim)
        float32 and its ``last_frozen`` (d the chunk followed, -1: none), in request order. Each
        request is answered as :meth:`predict` would answer it alone; nothing of one request
        reaches another's chunk.

        This default runs :meth:`predict` per request; policies that evaluate a network override it
        with one batched evaluation."""
        b = len(obs)
        pres = committed_prefixes if committed_prefixes is not None else [None] * b
        frs = frozens if frozens is not None else [None] * b
        out = []
        for o, p, f in zip(obs, pres, frs):
            a = self.predict(o, p, f)
            out.append((a, self.last_frozen))
        return out


def followed_prefix(committed_prefix, frozen: int | None, horizon: int) -> int:
    """How many actions of an RTC prefix a scripted policy keeps as they are (hard inpainting): the
    whole prefix up to H, or only its first ``frozen`` (d) when given; 0 without a prefix."""
    d = 0 if committed_prefix is None else min(len(committed_prefix), horizon)
    if frozen is not None:  # only the committed part is followed; the overlap beyond it is free
        d = min(d, max(0, int(frozen)))
    return d
