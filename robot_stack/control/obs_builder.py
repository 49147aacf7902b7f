"""The policy's observation window from recent samples, for one arm or several (pure).

:class:`ObservationBuilder` takes the recent camera frames and robot states (message lists, oldest
first, as the controller's subscriber keeps them) and the time, and returns the window the policy
gets: ``ee_pose``, ``q``, ``gripper_width`` and ``state`` of every arm in action order at the
window's times, camera images resized to the policy's size, depth, and point clouds in the base
frame. A missing or stale stream raises :class:`~robot_stack.control.observation.StaleStreamError`
naming it (the controller holds the arms). So does a window whose streams disagree in time by more
than the setup's bound (:class:`SkewError`): the cameras' frames for one of the window's times
spread wider than ``max_skew_ns``, or the robot state extrapolated further than that to reach the
anchor. The skews of every
window built are kept for the latency breakdown (:meth:`ObservationBuilder.metrics`).
"""

from __future__ import annotations

import collections

import numpy as np

from robot_stack.comm.messages import CameraFrame, RobotState
from robot_stack.control.features import camera_images, state_vector
from robot_stack.control.observation import Observation, StaleStreamError, assemble, interpolate_states


class SkewError(StaleStreamError):
    """The streams of an observation window disagree in time by more than the setup's bound."""


def default_max_skew_ns(camera_rates_hz: list[float], margin_ns: int = 10_000_000) -> int | None:
    """The skew bound two unsynchronised cameras at their configured rates meet: half the slower
    camera's period (the nearest frame of a free-running camera is at most that far from any
    time) plus ``margin_ns`` (stamp jitter); None without cameras."""
    if not camera_rates_hz:
        return None
    return int(0.5e9 / min(camera_rates_hz)) + margin_ns


class ObservationBuilder:
    """Builds observation windows (see the module docstring).

    Args:
        arms: arm node names in action order (their states' ``source``).
        camera_ids: the cameras' ids.
        obs_keys: keys sent to the policy (``ee_pose``, ``q``, ``gripper_width``, ``state``,
            ``<camera>.color/.depth/.points``).
        obs_horizon: To.
        dt_ns: window spacing (the control period), ns.
        max_obs_age_ns: the window's anchor may be at most this old, ns.
        latency_offsets_ns: stream -> latency subtracted from its stamps (latency calibration).
        image_size: (h, w) every image is resized to; None: each camera's size in ``image_sizes``
            (native without one).
        extrinsics: camera id -> T_base_camera (4, 4), for ``.points``.
        max_skew_ns: bound on the cameras' spread at the anchor and on the state's extrapolation,
            ns (None: no bound; :func:`default_max_skew_ns` gives the setup's default).

    Attributes:
        skew_holds: windows refused for their skew.
    """

    def __init__(
        self,
        arms: list[str],
        camera_ids: list[str],
        obs_keys: list[str],
        obs_horizon: int,
        dt_ns: int,
        max_obs_age_ns: int,
        latency_offsets_ns: dict[str, int] | None = None,
        image_size: tuple[int, int] | None = None,
        extrinsics: dict | None = None,
        max_skew_ns: int | None = None,
    ):
        self.max_skew_ns, self.skew_holds = max_skew_ns, 0
        self.skews = {k: collections.deque(maxlen=2000) for k in ("camera_skew", "state_skew")}  # ms
        self.arms, self.camera_ids = list(arms), list(camera_ids)
        self.obs_keys, self.obs_horizon = list(obs_keys), obs_horizon
        self.dt_ns, self.max_obs_age_ns = dt_ns, max_obs_age_ns
        self.offsets = dict(latency_offsets_ns or {})
        self.image_size = image_size
        self.image_sizes: dict[str, tuple[int, int]] = {}  # camera id -> (h, w), from the policy's spec
        self.point_specs: dict = {}  # camera id -> PointCloudSpec, from the policy's spec
        self.extrinsics = dict(extrinsics or {})

    def agree(self, obs_keys: list[str] | None, obs_horizon: int | None, image_sizes: dict, point_specs: dict) -> None:
        """Take what the policy's spec settled (None: keep the setup's own)."""
        self.obs_keys = list(obs_keys) if obs_keys else self.obs_keys
        self.obs_horizon = obs_horizon or self.obs_horizon
        self.image_sizes, self.point_specs = dict(image_sizes), dict(point_specs)

    def states_of(self, states: list[RobotState], arm: str) -> list[RobotState]:
        """One arm's states out of a mixed history (one arm: all of them)."""
        return [m for m in states if m.source == arm] if len(self.arms) > 1 else list(states)

    def build(
        self, frames: dict[str, list[CameraFrame]], states: list[RobotState], now_ns: int
    ) -> tuple[Observation, dict[str, np.ndarray]]:
        """The window at ``now_ns`` and the arrays to send, keyed and ordered as ``obs_keys``.

        Args:
            frames: camera id -> recent frames, oldest first.
            states: recent robot states of every arm, oldest first.

        Raises:
            StaleStreamError: a stream is missing, too old, or has no sample near a window time;
                or no stream provides a requested key.
        """
        obs = assemble(
            frames,
            self.states_of(states, self.arms[0]),
            self.obs_horizon,
            self.dt_ns,
            now_ns,
            self.max_obs_age_ns,
            latency_offsets_ns=self.offsets,
        )
        self.skews["camera_skew"].append(obs.camera_skew_ns / 1e6)
        self.skews["state_skew"].append(obs.state_skew_ns / 1e6)
        if self.max_skew_ns is not None and max(obs.camera_skew_ns, obs.state_skew_ns) > self.max_skew_ns:
            self.skew_holds += 1
            if obs.camera_skew_ns > self.max_skew_ns:
                why = f"the cameras' frames spread {obs.camera_skew_ns / 1e6:.1f} ms"
            else:
                why = f"the robot state extrapolated {obs.state_skew_ns / 1e6:.1f} ms"
            raise SkewError("observation", f"{why} (bound {self.max_skew_ns / 1e6:.1f} ms)")
        q, ee, g = self._arm_windows(obs, states)
        arrays = {"ee_pose": ee.astype(np.float32), "q": q.astype(np.float32), "gripper_width": g.astype(np.float32)}
        arrays["state"] = np.concatenate(
            [state_vector(ee[:, 7 * i : 7 * i + 7], g[:, i]) for i in range(len(self.arms))], axis=1
        )
        for cid in obs.color:
            size = self.image_size or self.image_sizes.get(cid)
            arrays[f"{cid}.color"] = camera_images(obs.color[cid], size)
            if cid in obs.depth:
                arrays[f"{cid}.depth"] = camera_images(obs.depth[cid], size)
            if f"{cid}.points" in self.obs_keys and cid in obs.depth:
                arrays[f"{cid}.points"] = self._clouds(cid, obs.depth[cid], frames[cid][-1])
        missing = set(self.obs_keys) - arrays.keys()
        if missing:
            raise StaleStreamError("observation", f"no stream provides {sorted(missing)}")
        return obs, {k: arrays[k] for k in self.obs_keys}

    def _arm_windows(self, obs: Observation, states: list[RobotState]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q, ee_pose, gripper_width) of every arm at the window's times, concatenated in arm order
        along the last axis (one arm: the observation's own)."""
        if len(self.arms) == 1:
            return obs.q, obs.ee_pose, obs.gripper_width[:, None]
        tol = self.dt_ns // 2
        qs, ees, gs = [obs.q], [obs.ee_pose], [obs.gripper_width[:, None]]
        for a in self.arms[1:]:
            hist = self.states_of(states, a)
            if not hist:
                raise StaleStreamError(f"{RobotState.TOPIC} of {a}", "no robot state received")
            st = np.array([m.stamp_ns for m in hist], np.int64) - self.offsets.get(RobotState.TOPIC, 0)
            if obs.times_ns[-1] - st[-1] > tol:
                raise StaleStreamError(
                    f"{RobotState.TOPIC} of {a}",
                    f"newest state is {(obs.times_ns[-1] - st[-1]) / 1e6:.0f} ms behind the window",
                )
            q, ee, g = interpolate_states(
                st,
                np.array([m.q for m in hist]),
                np.array([m.ee_pose for m in hist]),
                np.array([m.gripper_width for m in hist]),
                obs.times_ns,
                max_extrapolation_ns=tol,
            )
            qs.append(q)
            ees.append(ee)
            gs.append(np.asarray(g)[:, None])
        return np.concatenate(qs, 1), np.concatenate(ees, 1), np.concatenate(gs, 1)

    def _clouds(self, cid: str, depth: np.ndarray, frame: CameraFrame) -> np.ndarray:
        """(To, N, 3) float32 clouds of camera ``cid`` in the base frame (features.PointCloudSpec)."""
        spec = self.point_specs.get(cid)
        if spec is None:
            raise StaleStreamError(f"{cid}.points", "the policy's spec gives no point-cloud settings for this camera")
        if cid not in self.extrinsics:
            raise StaleStreamError(f"{cid}.points", "no T_base_camera for this camera in the setup's calibration file")
        return spec.clouds(depth, frame.K, frame.depth_scale, self.extrinsics[cid])

    def anchor_camera(self, latest: dict[str, CameraFrame | None]) -> str | None:
        """The camera whose next frame advances the window's anchor (the anchor is the newest time
        every camera reached); None without cameras or while one has sent nothing."""
        if not latest or any(f is None for f in latest.values()):
            return None
        return min(latest, key=lambda c: latest[c].stamp_ns - self.offsets.get(c, 0))

    def anchor(self, latest) -> tuple[str, int] | None:
        """(topic, seq) of the newest frame of the camera whose next frame advances the anchor,
        given ``latest(camera_id) -> CameraFrame | None``; None without cameras or while one has
        sent nothing."""
        frames = {cid: latest(cid) for cid in self.camera_ids}
        cid = self.anchor_camera(frames)
        return None if cid is None else (CameraFrame.topic(cid), frames[cid].seq)

    def metrics(self) -> dict[str, float]:
        """``skew_holds`` and the p50/p99 of the windows' camera and state skews, ms
        (``stage_camera_skew_p50_ms`` ...: part of the latency breakdown)."""
        m = {"skew_holds": float(self.skew_holds)}
        for k, v in self.skews.items():
            if v:
                a = np.array(v)
                m[f"stage_{k}_p50_ms"], m[f"stage_{k}_p99_ms"] = (
                    float(np.percentile(a, 50)),
                    float(np.percentile(a, 99)),
                )
        return m
