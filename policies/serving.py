"""What every policy server checks before a request reaches a model, in one place: the policy
node (:mod:`robot_stack.nodes.policy`) and the Ray Serve replicas (:mod:`robot_stack.policies.ray_serve`)."""

from __future__ import annotations

import numpy as np

from robot_stack.comm.messages import ErrorReply, Message, ObservationWindow, PolicySpec
from robot_stack.policies.base import ObservationError, PolicyMetadata


def committed_prefix(msg: ObservationWindow) -> np.ndarray | None:
    """The request's RTC prefix (k, D), or None when it carries none."""
    p = msg.committed_prefix
    return None if p is None or len(p) == 0 else np.asarray(p)


def frozen_count(msg: ObservationWindow) -> int | None:
    """d, the committed actions of the prefix (None: all of it)."""
    return None if msg.prefix_frozen < 0 else int(msg.prefix_frozen)


def check_request(msg: Message, md: PolicyMetadata, max_obs_age_s: float) -> ErrorReply | None:
    """None for a request the policy may see; else the ErrorReply naming what is wrong: not an
    observation window (``bad_request``), keys/shapes/dtypes against ``md``, a non-finite value in
    a float observation or in the prefix, or a prefix of the wrong width (``bad_observation``), an
    observation older than ``max_obs_age_s`` s (``stale``)."""
    if not isinstance(msg, ObservationWindow):
        return ErrorReply(code="bad_request", reason=f"expected observation_window, got {msg.SCHEMA}")
    try:
        md.validate(msg.obs)
    except ObservationError as e:
        return ErrorReply(request_id=msg.request_id, code="bad_observation", reason=str(e))
    arrays = [(k, np.asarray(a)) for k, a in msg.obs.items()]
    if msg.committed_prefix is not None:
        arrays.append(("committed prefix", np.asarray(msg.committed_prefix)))
    for k, a in arrays:
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            return ErrorReply(
                request_id=msg.request_id, code="bad_observation", reason=f"{k}: {bad} non-finite values (NaN or inf)"
            )
    if len(msg.obs_age_ns) and msg.obs_age_ns.max() > max_obs_age_s * 1e9:
        return ErrorReply(
            request_id=msg.request_id,
            code="stale",
            reason=f"observation is {msg.obs_age_ns.max() / 1e6:.0f} ms old (max {max_obs_age_s * 1e3:.0f} ms)",
        )
    prefix = committed_prefix(msg)
    if prefix is not None and (prefix.ndim != 2 or prefix.shape[1] != md.action_dim):
        return ErrorReply(
            request_id=msg.request_id,
            code="bad_observation",
            reason=f"committed prefix has shape {prefix.shape}, policy acts in {md.action_dim} dims",
        )
    return None


#: what a request may carry beyond its arrays (msgpack header, keys, an openpi client's extras), bytes
REQUEST_SLACK_BYTES = 1 << 20


def request_size_cap(md: PolicyMetadata) -> int:
    """The largest request a policy with metadata ``md`` needs to read, bytes: twice its
    observation window (every key at To x shape x itemsize, as float64 where it is a float: an
    openpi client may send doubles) plus an RTC prefix of H x action_dim float32, plus
    :data:`REQUEST_SLACK_BYTES`. Servers refuse larger requests before reading them."""
    obs = 0
    for shape, dtype in md.obs_shapes.values():
        dt = np.dtype(dtype)
        itemsize = 8 if dt.kind == "f" else dt.itemsize
        obs += md.obs_horizon * int(np.prod(shape, dtype=np.int64)) * itemsize
    return 2 * (obs + md.horizon * md.action_dim * 4) + REQUEST_SLACK_BYTES


def metadata_to_dict(md: PolicyMetadata) -> dict:
    """Plain data (msgpack-able) for a :class:`PolicyMetadata` (norm_stats left out)."""
    return {
        "obs_shapes": {k: [list(shape), dtype] for k, (shape, dtype) in md.obs_shapes.items()},
        "obs_horizon": md.obs_horizon,
        "horizon": md.horizon,
        "action_dim": md.action_dim,
        "action_space": md.action_space,
        "dt": md.dt,
        "offset": md.offset,
        "supports_prefix": md.supports_prefix,
        "points": md.points,
        "action_names": list(md.action_names),
    }


def metadata_from_dict(d: dict) -> PolicyMetadata:
    """Inverse of :func:`metadata_to_dict`."""
    return PolicyMetadata(
        obs_shapes={k: (tuple(v[0]), str(v[1])) for k, v in d["obs_shapes"].items()},
        obs_horizon=int(d["obs_horizon"]),
        horizon=int(d["horizon"]),
        action_dim=int(d["action_dim"]),
        action_space=str(d["action_space"]),
        dt=float(d["dt"]),
        offset=int(d["offset"]),
        supports_prefix=bool(d["supports_prefix"]),
        points=dict(d.get("points") or {}),
        action_names=tuple(d.get("action_names") or ()),
    )


def spec_message(md: PolicyMetadata, request_id: int = 0) -> PolicySpec:
    """The :class:`PolicySpec` reply for a policy's metadata."""
    keys = list(md.obs_shapes)
    return PolicySpec(
        request_id=request_id,
        obs_keys=keys,
        obs_shapes={k: np.asarray(md.obs_shapes[k][0], np.int64) for k in keys},
        obs_dtypes=[str(md.obs_shapes[k][1]) for k in keys],
        obs_horizon=md.obs_horizon,
        horizon=md.horizon,
        action_dim=md.action_dim,
        action_space=md.action_space,
        dt=float(md.dt),
        offset=md.offset,
        supports_prefix=md.supports_prefix,
        points={
            c: np.array([*p["lo"], *p["hi"], p["n_points"], p.get("stride", 2)], np.float64)
            for c, p in md.points.items()
        },
        action_names=list(md.action_names),
    )


def metadata_from_spec(spec: PolicySpec) -> PolicyMetadata:
    """Inverse of :func:`spec_message`."""
    if len(spec.obs_dtypes) != len(spec.obs_keys) or set(spec.obs_shapes) != set(spec.obs_keys):
        raise ValueError("policy spec: obs_keys, obs_shapes and obs_dtypes disagree")
    return PolicyMetadata(
        obs_shapes={k: (tuple(int(v) for v in spec.obs_shapes[k]), d) for k, d in zip(spec.obs_keys, spec.obs_dtypes)},
        obs_horizon=spec.obs_horizon,
        horizon=spec.horizon,
        action_dim=spec.action_dim,
        action_space=spec.action_space,
        dt=spec.dt,
        offset=spec.offset,
        supports_prefix=spec.supports_prefix,
        points={
            c: {"lo": v[:3].tolist(), "hi": v[3:6].tolist(), "n_points": int(v[6]), "stride": int(v[7])}
            for c, v in (spec.points or {}).items()
        },
        action_names=tuple(spec.action_names),
    )


def spec_mismatch(
    md: PolicyMetadata,
    obs_keys: list[str] | None,
    obs_horizon: int | None,
    image_size: tuple[int, int] | None,
    camera_ids: list[str],
    action_space: str = "ee_pose+gripper",
    action_dim: int = 8,
) -> list[str]:
    """What a controller's setup gets wrong about a policy (empty: nothing), one line per difference:
    observation keys, To, image size of each image key, a camera key for a camera the controller
    does not subscribe to, the action layout. A setting left None is taken from the spec, so it
    cannot differ."""
    out = []
    want, have = set(md.obs_shapes), set(obs_keys if obs_keys is not None else md.obs_shapes)
    if want != have:
        out.append(
            f"observation keys: the policy needs {sorted(want)}, the controller sends {sorted(have)}"
            + (f" (missing {sorted(want - have)})" if want - have else "")
            + (f" (extra {sorted(have - want)})" if have - want else "")
        )
    if obs_horizon is not None and md.obs_horizon != obs_horizon:
        out.append(f"obs_horizon: the policy takes To = {md.obs_horizon}, the controller sends {obs_horizon}")
    for k, (shape, _) in md.obs_shapes.items():
        cam, _, kind = k.rpartition(".")
        if kind not in ("color", "depth", "points") or not cam:
            continue
        if cam not in camera_ids:
            out.append(f"{k}: the policy needs camera {cam!r}, the controller's cameras are {sorted(camera_ids)}")
        if kind == "points" and cam not in md.points:
            out.append(f"{k}: the policy's spec does not say how to build the cloud (no points settings)")
        if kind != "points" and image_size is not None and tuple(shape[:2]) != tuple(image_size):
            out.append(
                f"{k}: the policy takes {shape[0]}x{shape[1]} images, the controller resizes to "
                f"{image_size[0]}x{image_size[1]}"
            )
    if md.action_space != action_space or md.action_dim != action_dim:

        def arms(d: int) -> str:
            return (
                f" ({d // 8} arm{'s' if d // 8 != 1 else ''})"
                if d % 8 == 0 and action_space == "ee_pose+gripper"
                else ""
            )

        out.append(
            f"actions: the policy outputs {md.action_dim}-D {md.action_space!r}{arms(md.action_dim)}, the "
            f"controller executes {action_dim}-D {action_space!r}{arms(action_dim)}"
        )
    return out
