"""What every policy server checks before a request reaches a model, in one place: the policy
node (:mod:`robot_stack.nodes.policy`) and the Ray Serve replicas (:mod:`robot_stack.policies.ray_serve`)."""

from __future__ import annotations

import numpy as np

from robot_stack.comm.messages import ErrorReply, Message, ObservationWindow
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
    observation window (``bad_request``), keys/shapes/dtypes against ``md`` or a prefix of the wrong
    width (``bad_observation``), an observation older than ``max_obs_age_s`` s (``stale``)."""
    if not isinstance(msg, ObservationWindow):
        return ErrorReply(code="bad_request", reason=f"expected observation_window, got {msg.SCHEMA}")
    try:
        md.validate(msg.obs)
    except ObservationError as e:
        return ErrorReply(request_id=msg.request_id, code="bad_observation", reason=str(e))
    if len(msg.obs_age_ns) and msg.obs_age_ns.max() > max_obs_age_s * 1e9:
        return ErrorReply(request_id=msg.request_id, code="stale",
                          reason=f"observation is {msg.obs_age_ns.max() / 1e6:.0f} ms old "
                                 f"(max {max_obs_age_s * 1e3:.0f} ms)")
    prefix = committed_prefix(msg)
    if prefix is not None and (prefix.ndim != 2 or prefix.shape[1] != md.action_dim):
        return ErrorReply(request_id=msg.request_id, code="bad_observation",
                          reason=f"committed prefix has shape {prefix.shape}, policy acts in {md.action_dim} dims")
    return None


def metadata_to_dict(md: PolicyMetadata) -> dict:
    """Plain data (msgpack-able) for a :class:`PolicyMetadata` (norm_stats left out)."""
    return {"obs_shapes": {k: [list(shape), dtype] for k, (shape, dtype) in md.obs_shapes.items()},
            "obs_horizon": md.obs_horizon, "horizon": md.horizon, "action_dim": md.action_dim,
            "action_space": md.action_space, "dt": md.dt, "offset": md.offset, "supports_prefix": md.supports_prefix}


def metadata_from_dict(d: dict) -> PolicyMetadata:
    """Inverse of :func:`metadata_to_dict`."""
    return PolicyMetadata(obs_shapes={k: (tuple(v[0]), str(v[1])) for k, v in d["obs_shapes"].items()},
                          obs_horizon=int(d["obs_horizon"]), horizon=int(d["horizon"]), action_dim=int(d["action_dim"]),
                          action_space=str(d["action_space"]), dt=float(d["dt"]), offset=int(d["offset"]),
                          supports_prefix=bool(d["supports_prefix"]))
