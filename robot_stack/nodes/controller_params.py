"""The controller's settings and their checks against the rest of the setup.

:class:`ControllerParams` is the ``params`` block of a ``kind: controller`` node (see the node's
docstring, :mod:`robot_stack.nodes.controller`, for what each strategy and source does);
:func:`check_setup` holds the cross-node checks the node runs at start-up.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from robot_stack.runtime.config import ConfigError, StackConfig
from robot_stack.runtime.node import NodeParams


class ControllerParams(NodeParams):
    arm: str = Field("arm", description="the arm node driven (one arm)")
    arms: list[str] | None = Field(
        None,
        min_length=1,
        description=(
            "several arm nodes driven in lockstep (bimanual): a chunk holds 8 actions per arm in this order, each "
            "in its arm's base frame, and the state is their state vectors in this order. None: the one arm ``arm``"
        ),
    )
    hold_together: bool = Field(True, description="several arms: an arm in e-stop holds the others too")
    policy: str = Field("policy", description="policy node name (ignored when policy_endpoint is set)")
    policy_endpoint: str | None = Field(
        None,
        description="a remote policy: tcp://... (our protocol, CURVE off-host) "
        "or ws://127.0.0.1:PORT / wss://... (openpi's websocket protocol)",
    )
    openpi_keys: dict[str, str] | None = Field(None, description="ws:// policy: openpi observation key -> our key")
    openpi_api_key_env: str | None = Field(None, description="ws:// policy: environment variable with the API key")
    cameras: list[str] = Field(default_factory=list, description="camera node names")
    obs_keys: list[str] | None = Field(
        None,
        min_length=1,
        description="keys sent to the policy: ee_pose, q, gripper_width, state, "
        "<camera_id>.color/.depth/.points (None: the policy's spec; [ee_pose] "
        "without one); .points needs the camera's T_base_camera in the setup's "
        "calibration file and the cloud settings from the policy's spec",
    )
    rate_hz: float = Field(10.0, gt=0, le=100, description="control rate, Hz (1/dt)")
    obs_horizon: int | None = Field(None, ge=1, description="To (None: the policy's spec; 2 without one)")
    strategy: Literal["sync", "async", "ensemble", "rtc"] = Field(
        "sync",
        description="execution strategy: sync (receding horizon), async, ensemble (temporal ensembling) or rtc (real-time chunking)",
    )
    execute_horizon: int = Field(
        8, ge=1, description="s: actions executed per chunk before the next request (sync and async)"
    )
    ensemble_m: float = Field(0.01, description="ensemble: weight exp(-m i) of the i-th oldest prediction (ACT)")
    ensemble_steps: int = Field(4, ge=1, description="ensemble: steps sent ahead each control step")
    exec_latency_s: float = Field(
        0.01,
        ge=0,
        description="time from sending a schedule to the arm acting on it; actions due sooner are dropped, s",
    )
    start_from_rest: bool = Field(
        True,
        description="a chunk that finds nothing planned since its observation "
        "(the arm at rest) is stamped from its arrival, so its first actions run first "
        "(chunking.chunk_anchor_ns); false: from its observation, d steps dropped",
    )
    max_obs_age_s: float = Field(
        0.3, gt=0, description="a stream older than this holds the arm instead of feeding the policy, s"
    )
    prompt: str = Field(
        "",
        description="the task text sent with every request (openpi's prompt) until an episode's start "
        "event brings its own",
    )
    max_skew_s: float | None = Field(
        None,
        gt=0,
        description="an observation whose camera frames spread wider than this at its anchor (or whose "
        "robot state is extrapolated further) holds the arm, s; default: half the slowest camera's period "
        "+ 10 ms",
    )
    request_timeout_s: float = Field(
        2.0, gt=0, description="an inference request without a reply in this time fails, s"
    )
    policy_lost_s: float | None = Field(
        10.0,
        gt=0,
        description="once the policy has answered, requests failing for this long in a row (timeouts, "
        "refusals, errors) end the controller by name: the launcher reports it and the arms hold, s "
        "(None: retry for ever)",
    )
    source: Literal["policy", "teleop", "external"] = Field(
        "policy", description="who drives: the policy, a teleop device, or only schedules sent to the input (replay)"
    )
    teleop: str | None = Field(None, description="teleop node name (teleop source and intervention)")
    teleop_timeout_s: float = Field(0.5, gt=0, description="teleop commands older than this are not executed")
    autostart: bool = Field(True, description="execute from start-up (else wait for an episode start event)")
    spec_timeout_s: float = Field(
        60.0, gt=0, description="start-up wait for the policy's spec (it may be loading a model), s"
    )
    image_size: tuple[int, int] | None = Field(
        None,
        description="(h, w) camera images are resized to (INTER_AREA); "
        "None: each camera's size in the policy's spec (native without one)",
    )
    fast: str | None = Field(
        None,
        description="slow-fast control: a fast-layer file (robot-stack train-fast) run at "
        "its rate in this node, correcting the plan from the arm's wrist wrench (RDP-style)",
    )
    fast_lookahead_s: float = Field(0.5, gt=0, description="fast layer: how far ahead each tick resends the plan, s")
    request_on_frame: bool = Field(
        True,
        description="async/rtc/ensemble: a due request waits (up to max_obs_age_s) "
        "for the frame that advances the observation anchor",
    )

    @property
    def arm_nodes(self) -> list[str]:
        """The arm nodes this controller drives, in action order."""
        return list(self.arms) if self.arms else [self.arm]

    def references(self) -> dict[str, str]:
        refs = {**{a: "arm" for a in self.arm_nodes}, **{c: "camera" for c in self.cameras}}
        if self.teleop:
            refs[self.teleop] = "teleop"
        if self.source == "policy" and self.policy_endpoint is None:
            refs[self.policy] = "policy"
        return refs


def check_setup(p: ControllerParams, cfg: StackConfig) -> dict[str, str]:
    """The cross-node checks of a controller's params; returns camera node -> camera id.

    Raises:
        ConfigError: a camera that is not a camera node, an arm named twice, a fast layer with
            several arms, a control period not under half an arm's heartbeat timeout, openpi keys
            or an API key variable that do not fit the endpoint, no policy where the policy drives,
            a missing teleop node.
    """
    cam_ids = {}
    for c in p.cameras:
        nc = cfg.nodes.get(c)
        if nc is None or nc.kind != "camera":
            raise ConfigError(f"controller.cameras: {c!r} is not a camera node")
        cam_ids[c] = nc.typed.camera_id
    arms = p.arm_nodes
    if len(set(arms)) != len(arms):
        raise ConfigError(f"controller.arms: an arm is named twice in {arms}")
    if len(arms) > 1 and p.fast is not None:
        raise ConfigError("controller.fast: the fast layer corrects one arm's plan")
    for a in arms:
        arm_nc = cfg.nodes.get(a)
        if arm_nc is not None and arm_nc.kind == "arm":
            try:  # the arm's own limits (its setup over its robot's defaults)
                hb_timeout = float(arm_nc.typed.effective_safety(cfg).heartbeat_timeout_s)
            except (ValueError, OSError):  # no robot model: check() reports it at the arm
                hb_timeout = float(arm_nc.typed.safety.heartbeat_timeout_s)
            if 1.0 / p.rate_hz >= 0.5 * hb_timeout:
                raise ConfigError(
                    f"controller.rate_hz {p.rate_hz} Hz: the control period must be under half "
                    f"the heartbeat timeout of arm {a} ({hb_timeout} s)"
                )
    ws = p.policy_endpoint is not None and p.policy_endpoint.startswith(("ws://", "wss://"))
    if ws:
        mapped = set((p.openpi_keys or {"observation/state": "state"}).values())
        unmapped = set(p.obs_keys or ["ee_pose"]) - mapped
        if unmapped:
            raise ConfigError(f"controller.openpi_keys: no openpi key for observation keys {sorted(unmapped)}")
        if p.openpi_api_key_env and not os.environ.get(p.openpi_api_key_env):
            raise ConfigError(f"controller.openpi_api_key_env: environment variable {p.openpi_api_key_env} is not set")
    elif p.openpi_keys is not None:
        raise ConfigError("controller.openpi_keys is for a ws:// or wss:// policy_endpoint")
    if p.source == "policy" and not has_policy(p, cfg):
        raise ConfigError(f"controller.policy: no node {p.policy!r} in the config and no policy_endpoint")
    if p.teleop is not None and p.teleop not in cfg.nodes:
        raise ConfigError(f"controller.teleop: no node {p.teleop!r} in the config")
    if p.source == "teleop" and p.teleop is None:
        raise ConfigError("controller.source = teleop needs controller.teleop (the teleop node name)")
    return cam_ids


def has_policy(p: ControllerParams, cfg: StackConfig) -> bool:
    """The setup gives this controller a policy (an endpoint, or a policy node)."""
    return p.policy_endpoint is not None or p.policy in cfg.nodes
