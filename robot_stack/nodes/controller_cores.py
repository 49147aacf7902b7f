"""The controller's pure cores, built from its settings and the setup (:func:`build_cores`).

The node (:mod:`robot_stack.nodes.controller`) wires what this returns to its ports; a test can build
the same cores without a node. Each core lives in ``robot_stack.control`` with its own tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from robot_stack.control.executor import ChunkExecutor
from robot_stack.control.fast import FastCorrector, FastLayer
from robot_stack.control.modes import ModeMachine
from robot_stack.control.obs_builder import ObservationBuilder, default_max_skew_ns
from robot_stack.control.requests import RequestGate
from robot_stack.control.teleop_mix import ReplayQueue, TeleopMixer
from robot_stack.nodes.controller_params import ControllerParams, check_setup, has_policy
from robot_stack.nodes.policy_client import SetupView
from robot_stack.runtime.config import StackConfig


@dataclass
class ControllerCores:
    """What a controller decides with; attribute names match the node's.

    Attributes:
        cam_ids: camera node -> camera id, in the order of ``params.cameras``.
        arm_names: the arm nodes driven, in action order (8 action dimensions each).
        has_policy: the setup gives the controller a policy (a node or an endpoint).
        dt_ns: the control period, ns.
        setup: what the policy must agree to (spec negotiation); None without a policy.
    """

    cam_ids: dict[str, str]
    arm_names: list[str]
    has_policy: bool
    dt_ns: int
    obs: ObservationBuilder
    exec: ChunkExecutor
    modes: ModeMachine
    gate: RequestGate
    teleop_mix: TeleopMixer
    replay: ReplayQueue
    fast: FastLayer | None
    setup: SetupView | None


def build_cores(p: ControllerParams, cfg: StackConfig, max_failures: int = 20) -> ControllerCores:
    """The cores of a controller with params ``p`` in setup ``cfg``.

    Reads the calibration file named by ``cfg.calibration`` (latency offsets, T_base_camera) and the
    fast layer's corrector file (``p.fast``) when set.

    Raises:
        ConfigError: the cross-node checks of :func:`~robot_stack.nodes.controller_params.check_setup`.
        OSError, ValueError: a calibration or corrector file that cannot be read.
    """
    cam_ids = check_setup(p, cfg)
    arms, n = p.arm_nodes, len(p.arm_nodes)
    dt_ns, lat_ns, max_age_ns = int(round(1e9 / p.rate_hz)), int(p.exec_latency_s * 1e9), int(p.max_obs_age_s * 1e9)
    offsets, extrinsics = {}, {}
    if cfg.calibration is not None:  # latency corrections and T_base_camera (eye-to-hand), when calibrated
        from robot_stack.calibration import store

        offsets = store.latency_offsets_ns(cfg.calibration.file)
        extrinsics = store.base_camera_extrinsics(cfg.calibration.file)
    cams, keys, horizon = list(cam_ids.values()), p.obs_keys or ["ee_pose"], p.obs_horizon or 2
    fast = FastLayer(FastCorrector.load(p.fast), p.fast_lookahead_s) if p.fast is not None else None
    policy = has_policy(p, cfg)
    executor = ChunkExecutor(
        p.strategy, dt_ns, lat_ns, p.execute_horizon, 8 * n, p.start_from_rest, p.ensemble_m, p.ensemble_steps
    )
    executor.prompt = p.prompt
    return ControllerCores(
        cam_ids=cam_ids,
        arm_names=arms,
        has_policy=policy,
        dt_ns=dt_ns,
        obs=ObservationBuilder(
            arms, cams, keys, horizon, dt_ns, max_age_ns, offsets, p.image_size, extrinsics, max_skew_ns(p, cfg)
        ),
        exec=executor,
        modes=ModeMachine(p.source, p.autostart, policy, n, p.hold_together),
        gate=RequestGate(
            p.strategy != "sync" and p.request_on_frame,
            max_age_ns,
            max_failures,
            lost_after_ns=None if p.policy_lost_s is None else int(p.policy_lost_s * 1e9),
        ),
        teleop_mix=TeleopMixer(arms, dt_ns + lat_ns, int(p.teleop_timeout_s * 1e9)),
        replay=ReplayQueue(arms),
        fast=fast,
        setup=SetupView(p.obs_keys, p.obs_horizon, p.image_size, cams, arms, extrinsics, p.spec_timeout_s)
        if policy
        else None,
    )


def max_skew_ns(p, cfg) -> int | None:
    """The controller's skew bound, ns: ``max_skew_s``, else the default for its cameras' rates
    (:func:`~robot_stack.control.obs_builder.default_max_skew_ns`)."""
    if p.max_skew_s is not None:
        return int(p.max_skew_s * 1e9)
    return default_max_skew_ns([float(cfg.nodes[c].typed.rate_hz) for c in p.cameras])
