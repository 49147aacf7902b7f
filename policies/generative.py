"""Diffusion and flow-matching visuomotor policies: model, loss, ONNX export, torch/ORT inference.

A :class:`GenerativePolicyModel` bundles the network (:class:`~robot_stack.policies.networks.PolicyNet`),
the sampler kind ("ddim" or "flow"), action normalization and the policy metadata. Inference runs
the shared sampler loop (``samplers.py``) around one of two denoiser backends:

- :class:`TorchDenoiser`: torch eager (CUDA when available);
- :class:`OnnxDenoiser`: ONNX Runtime (CUDA / TensorRT execution providers when present, else CPU)
  on the exported graphs: the encoder (images..., proprio -> cond) once per chunk and one denoiser
  step (x_t, t, cond -> output) per sampler step, with the loop outside.

Observation keys: ``"<camera>.color"`` (To, h, w, 3) uint8 and/or ``"<camera>.depth"`` (To, h, w)
uint16 mm, and ``"state"`` (To, P) float32. Actions are normalized to [-1, 1] per dimension with
the min/max stats stored in the model.
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .base import Policy, PolicyMetadata
from .networks import PolicyNet
from .samplers import DDIM, Flow, MeanFlow

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Architecture and sampling settings: the one definition of a model's settings, stored in its
    checkpoint and written under ``model:`` in ``robot-stack train`` settings (YAML; pydantic
    validates it there, unknown keys refused). Defaults: the demo's policy (one-step flow on the
    wrist camera's RGB, 72x96, H = 16, To = 2, dt = 0.1 s).

    Attributes:
        cameras: camera id -> "rgb" | "depth" | "rgbd" | "points" (a point cloud (N, 3) in the base
            frame, observation key ``<camera>.points``: robot_stack.control.pointcloud) | "layered"
            (H3DP, Lu et al. 2025, arXiv 2505.07819: the RGB-D image cut into depth layers at
            ``depth_layers`` edges, each layer its RGB and depth where the pixel's depth falls in
            it, zero elsewhere; read by a multi-scale encoder whose scales condition the denoiser
            coarse-to-fine, coarse at the noisy start. Taken from the paper: depth-aware layering,
            multi-scale features, coarse-to-fine conditioning; simplified: keypoint read-outs per
            scale instead of feature pyramids, a soft time schedule instead of one action level per
            scale).
        image_hw: (h, w) the images are resized to before the encoder.
        proprio_dim, obs_horizon, horizon, action_dim, dt: data layout. Training takes
            ``proprio_dim`` and ``action_dim`` from the episodes (8 per arm: :meth:`with_arms`).
        kind: "ddim" (Diffusion Policy), "flow" (flow matching) or "meanflow" (MeanFlow, the
            average velocity over an interval: one-step sampling as in MP1).
        sample_steps: DDIM steps, Euler steps (1 = one-step flow) or MeanFlow jumps.
        n_points: N of "points" cameras; points_lo, points_hi: their workspace box in the base
            frame, m; points_stride: back-projection pixel stride (``PointCloudSpec``, built by
            robot_stack.control.features at training and at deploy time alike).
        depth_layers: edges (m) of the "layered" cameras' depth layers (K + 1 edges, K layers).
        scales: feature scales of the "layered" cameras' encoder (1..4).
        dispersive_weight: weight of the dispersive loss on the observation embeddings (MP1; 0: off).
        time_scale: the denoiser's sinusoidal time embedding reads ``time_scale * t``, t in [0, 1];
            None: 1000 for ddim and flow (DDPM's step scale), 1 for meanflow, whose training target
            holds the network's derivative in time: at 1000 the embedding's fastest features make
            that derivative large and erratic, and on the pick task's point clouds the held-out
            chunk error grew with training (55 mm at 400 steps, 60 at 1200, 99 at 3000) where at 1
            it fell to 36 mm at 1200 steps (README, "MeanFlow's time embedding").
        meanflow_ratio: MeanFlow training, the fraction of samples with an interval (s < e); the
            rest are s = e (flow matching). Geng et al. use 25 %.
        action_frame: "absolute" (the actions' positions in the base frame) or "relative" (UMI's
            relative trajectory, Chi et al. 2024, arXiv 2402.10329, sec. 3.2: the positions are
            offsets, m, from the TCP position of the newest observation, state[-1, :3]; orientation
            and gripper stay absolute). Several arms (8 values each): every arm's block from its
            own TCP position. The model learns and samples in its frame; the policy's
            chunks are always in the base frame (:meth:`GenerativePolicyModel.to_world`). For a
            wrist camera, whose image shows where the object lies relative to the gripper.
            "relative_xy": x and y as in "relative", z absolute (the table's height is fixed in
            the base frame). On the pick task it was not better than "relative" over two
            collections (README).
        action_names: the name of each action dimension (set from the episodes' arms by ``robot-stack
            train``; empty in older checkpoints): served in the spec, matched by name by the controller.
        rtc_max_prefix: training-time RTC (Black et al., arXiv 2512.05964): the model is trained
            with a clean prefix of d ~ U{0..rtc_max_prefix} actions given as input (with a mask
            channel) and the loss on the rest only, so at inference it continues a committed prefix
            at no extra cost. 0: not trained for it (inference-time guidance instead). At most H/2.
    """

    cameras: dict[str, str] = field(default_factory=lambda: {"wrist": "rgb"})
    image_hw: tuple[int, int] = (72, 96)
    proprio_dim: int = 8
    obs_horizon: int = 2
    horizon: int = 16
    action_dim: int = 8
    dt: float = 0.1
    kind: str = "flow"
    sample_steps: int = 1
    train_steps: int = 100
    enc_base: int = 16
    widths: tuple[int, ...] = (64, 128, 256)
    rtc_max_prefix: int = 0
    action_names: tuple[str, ...] = ()
    meanflow_ratio: float = 0.25
    time_scale: float | None = None
    n_points: int = 512
    points_lo: tuple[float, ...] = (0.25, -0.35, 0.003)
    points_hi: tuple[float, ...] = (0.75, 0.40, 0.30)
    points_stride: int = 2
    dispersive_weight: float = 0.0
    depth_layers: tuple[float, ...] = (0.0, 0.6, 1.2, 10.0)
    scales: int = 3
    action_frame: str = "absolute"

    def __post_init__(self):
        self.image_hw, self.widths = tuple(self.image_hw), tuple(self.widths)
        self.depth_layers = tuple(self.depth_layers)
        self.points_lo, self.points_hi = tuple(self.points_lo), tuple(self.points_hi)
        low = {
            "sample_steps": 1,
            "obs_horizon": 1,
            "horizon": 4,
            "enc_base": 4,
            "n_points": 16,
            "proprio_dim": 1,
            "action_dim": 1,
            "scales": 1,
        }
        for k, lo in low.items():
            if getattr(self, k) < lo:
                raise ValueError(f"{k} must be at least {lo}, got {getattr(self, k)}")
        if self.scales > 4 or self.dt <= 0 or self.dispersive_weight < 0 or not self.cameras:
            raise ValueError(
                f"scales must be 1..4, dt > 0, dispersive_weight >= 0 and a camera named, got scales "
                f"{self.scales}, dt {self.dt}, dispersive_weight {self.dispersive_weight}, cameras {self.cameras}"
            )
        if len(self.points_lo) != 3 or len(self.points_hi) != 3:
            raise ValueError(f"points_lo and points_hi are x y z (m), got {self.points_lo}, {self.points_hi}")
        if self.action_frame not in ("absolute", "relative", "relative_xy"):
            raise ValueError(f"action_frame must be 'absolute', 'relative' or 'relative_xy', got {self.action_frame!r}")
        if self.action_frame != "absolute" and (self.action_dim % 8 or self.proprio_dim != self.action_dim):
            raise ValueError(
                "action_frame relative needs the state and action layout of 8 values per arm "
                f"(proprio_dim {self.proprio_dim}, action_dim {self.action_dim})"
            )
        if not 0 <= self.rtc_max_prefix <= self.horizon // 2:
            raise ValueError(
                f"rtc_max_prefix {self.rtc_max_prefix} must be in 0..H/2 = {self.horizon // 2} (d <= s <= H - d)"
            )
        if any(m not in ("rgb", "depth", "rgbd", "points", "layered") for m in self.cameras.values()):
            raise ValueError(f"camera modes must be rgb, depth, rgbd, points or layered, got {self.cameras}")
        if len(self.depth_layers) < 2 or any(b <= a for a, b in zip(self.depth_layers, self.depth_layers[1:])):
            raise ValueError(f"depth_layers must be at least 2 increasing edges (m), got {self.depth_layers}")
        if min(self.image_hw) < 64 and any(m != "points" for m in self.cameras.values()):
            raise ValueError(f"image_hw {self.image_hw}: the encoder downsamples 32x; use at least 64x64 images")
        if self.kind not in ("ddim", "flow", "meanflow"):
            raise ValueError(f"kind must be 'ddim', 'flow' or 'meanflow', got {self.kind!r}")
        if self.time_scale is None:
            self.time_scale = 1.0 if self.kind == "meanflow" else 1000.0
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if self.kind == "meanflow" and self.rtc_max_prefix:
            raise ValueError("training-time RTC is not implemented for meanflow models")
        if self.horizon % 4:
            raise ValueError(f"horizon {self.horizon} must be divisible by 4 (two U-Net downsamplings)")

    @property
    def camera(self) -> str:
        """The camera of a one-camera model (what ``robot-stack train`` makes).

        Raises:
            ValueError: the model has several cameras."""
        if len(self.cameras) != 1:
            raise ValueError(f"a model of {len(self.cameras)} cameras ({sorted(self.cameras)}); one was expected")
        return next(iter(self.cameras))

    @property
    def mode(self) -> str:
        """The input mode of a one-camera model's camera (rgb, depth, rgbd, points, layered)."""
        return self.cameras[self.camera]

    def with_arms(self, arms: int | list[str]) -> ModelConfig:
        """This config for ``arms`` arms: 8 state and 8 action values per arm (the data's layout);
        given the recorded arm nodes (in action order; ``[""]`` for one arm), the action dimensions
        are named after them too (``control.features.action_names``), so a controller matches them
        to its robot by name.

        Raises:
            ValueError: the config names another state or action size than 8 or 8 x ``arms``."""
        names: tuple[str, ...] = ()
        if not isinstance(arms, int):
            from robot_stack.control.features import action_names

            names, arms = tuple(action_names(list(arms))), len(arms)
        want = 8 * arms
        for k in ("proprio_dim", "action_dim"):
            if getattr(self, k) not in (8, want):
                raise ValueError(
                    f"model.{k} {getattr(self, k)}: the episodes have {arms} arm(s), {want} values "
                    "(it is taken from them; leave it out)"
                )
        return dataclasses.replace(self, proprio_dim=want, action_dim=want, action_names=names or self.action_names)

    def channels(self) -> dict[str, int]:
        k_layers = 4 * (len(self.depth_layers) - 1)
        return {
            k: {"rgb": 3, "depth": 1, "rgbd": 4, "points": 3, "layered": k_layers}[v] for k, v in self.cameras.items()
        }


#: pydantic (``robot-stack train`` settings) validates this dataclass by its annotations; unknown keys are refused
ModelConfig.__pydantic_config__ = {"extra": "forbid"}


class GenerativePolicyModel(torch.nn.Module):
    """Network + normalization + sampler settings (all saved in the checkpoint)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.net = PolicyNet(
            cfg.channels(),
            cfg.proprio_dim,
            cfg.obs_horizon,
            cfg.action_dim,
            enc_base=cfg.enc_base,
            widths=cfg.widths,
            prefix_mask=cfg.rtc_max_prefix > 0,
            point_cameras=tuple(k for k, m in cfg.cameras.items() if m == "points"),
            multiscale_cameras=tuple(k for k, m in cfg.cameras.items() if m == "layered"),
            scales=cfg.scales,
            progress_from="ddim" if cfg.kind == "ddim" else "flow",
            t_scale=cfg.time_scale,
        )
        self.register_buffer("a_min", -torch.ones(cfg.action_dim))
        self.register_buffer("a_max", torch.ones(cfg.action_dim))
        self.sampler = {"ddim": lambda: DDIM(cfg.train_steps), "flow": Flow, "meanflow": MeanFlow}[cfg.kind]()

    # ------------------------------------------------------------------ observation tensors
    def images(self, obs: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """Per camera (1, To, C, h, w) float32 in [0, 1] (depth: metres / 2, clipped), or for a
        "points" camera its clouds (1, To, N, 3) in m."""
        out = []
        h, w = self.cfg.image_hw
        for cam, mode in self.cfg.cameras.items():
            if mode == "points":
                out.append(torch.from_numpy(np.asarray(obs[f"{cam}.points"], np.float32))[None])
                continue
            chans = []
            if mode == "layered":
                chans = [
                    depth_layers(
                        np.asarray(obs[f"{cam}.color"]), np.asarray(obs[f"{cam}.depth"]), self.cfg.depth_layers
                    )
                ]
            if mode in ("rgb", "rgbd"):
                chans.append(torch.from_numpy(np.asarray(obs[f"{cam}.color"], np.float32) / 255.0).permute(0, 3, 1, 2))
            if mode in ("depth", "rgbd"):
                d = np.clip(np.asarray(obs[f"{cam}.depth"], np.float32) / 2000.0, 0, 1)
                chans.append(torch.from_numpy(d)[:, None])
            x = torch.cat(chans, dim=1)
            if x.shape[-2:] != (h, w):
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            out.append(x[None])
        return out

    def metadata(self) -> PolicyMetadata:
        c = self.cfg
        shapes = {"state": ((c.proprio_dim,), "<f4")}
        return PolicyMetadata(
            obs_shapes=shapes,
            obs_horizon=c.obs_horizon,
            horizon=c.horizon,
            action_dim=c.action_dim,
            action_space="ee_pose+gripper",
            dt=c.dt,
            supports_prefix=True,
            points={k: self.point_spec().to_dict() for k, m in c.cameras.items() if m == "points"},
            action_names=tuple(c.action_names),
        )

    def point_spec(self):
        """The :class:`~robot_stack.control.features.PointCloudSpec` of this model's "points" cameras."""
        from robot_stack.control.features import PointCloudSpec

        c = self.cfg
        return PointCloudSpec(tuple(c.points_lo), tuple(c.points_hi), c.n_points, c.points_stride)

    # --------------------------------------------------------------------------- training
    def loss(self, images: list[torch.Tensor], proprio: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Denoising loss on a batch: images per camera (B, To, C, h, w), proprio (B, To, P),
        actions (B, H, D) in world units (base frame)."""
        cond = self.net.encode(images, proprio)
        loss = self._denoising_loss(cond, self.to_model_frame(actions, proprio))
        if self.cfg.dispersive_weight:
            from .networks import dispersive_loss

            loss = loss + self.cfg.dispersive_weight * dispersive_loss(cond)
        return loss

    def _denoising_loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x1 = self.normalize(actions)
        noise = torch.randn_like(x1)
        b = x1.shape[0]
        if self.cfg.kind == "meanflow":
            return self._meanflow_loss(cond, x1, noise)
        if self.cfg.kind == "ddim":
            k = torch.randint(0, self.cfg.train_steps, (b,), device=x1.device)
            xt, target = self.sampler.training_pair(x1, noise, k)
            t = k.float() / self.cfg.train_steps
        else:
            t = torch.rand(b, device=x1.device)
            xt, target = self.sampler.training_pair(x1, noise, t)
        if not self.cfg.rtc_max_prefix:
            return torch.nn.functional.mse_loss(self.net(xt, t, cond), target)
        # training-time RTC: a clean prefix of d ~ U{0..d_max} actions replaces the noisy ones (the
        # mask channel marks it) and the loss covers the rest only
        d = torch.randint(0, self.cfg.rtc_max_prefix + 1, (b,), device=x1.device)
        mask = (torch.arange(x1.shape[1], device=x1.device)[None] < d[:, None])[..., None]  # (B, H, 1)
        inp = torch.cat([torch.where(mask, x1, xt), mask.float()], dim=-1)
        err = (self.net(inp, t, cond) - target) ** 2 * (~mask)
        return err.sum() / ((~mask).sum() * x1.shape[-1]).clamp_min(1)

    def _meanflow_loss(self, cond, x1, noise) -> torch.Tensor:
        """MeanFlow's loss (:class:`~robot_stack.policies.samplers.MeanFlow`): intervals (s, e) with
        s < e for ``meanflow_ratio`` of the batch (two uniform times, sorted), s = e otherwise; the
        target from one JVP through the denoiser (the observation encoding has no tangent); the
        paper's adaptive weight 1 / (err + 1e-3)^p, p = 1 (Geng et al. 2025, sec. 4.3)."""
        b = x1.shape[0]
        t1, t2 = torch.rand(b, device=x1.device), torch.rand(b, device=x1.device)
        s, e = torch.minimum(t1, t2), torch.maximum(t1, t2)
        e = torch.where(torch.rand(b, device=x1.device) < self.cfg.meanflow_ratio, e, s)
        xs, v = self.sampler.training_pair(x1, noise, s, e)
        tt = torch.stack([s, e], dim=1)
        u, du = torch.func.jvp(
            lambda x, t: self.net(x, t, cond),
            (xs, tt),
            (v, torch.stack([torch.ones_like(s), torch.zeros_like(e)], dim=1)),
        )
        target = (v + (e - s)[:, None, None] * du).detach()
        err = ((u - target) ** 2).mean(dim=(1, 2))
        return (err / (err.detach() + 1e-3)).mean()

    def _positions(self) -> list[int]:
        """Indices of the action positions taken relative (x y z, or x y for "relative_xy", of
        every 8-value arm block)."""
        axes = 2 if self.cfg.action_frame == "relative_xy" else 3
        return [8 * i + k for i in range(max(1, self.cfg.action_dim // 8)) for k in range(axes)]

    def to_model_frame(self, actions, state):
        """Base-frame actions (..., H, D) -> the model's frame (``cfg.action_frame``), given the
        observation windows' states (..., To, P) (torch or numpy; same leading shape)."""
        return self._shift(actions, state, -1.0)

    def to_world(self, actions, state):
        """The model's actions (..., H, D) -> the base frame (inverse of :meth:`to_model_frame`)."""
        return self._shift(actions, state, 1.0)

    def _shift(self, actions, state, sign: float):
        if self.cfg.action_frame == "absolute":
            return actions
        idx = self._positions()
        out = actions.clone() if torch.is_tensor(actions) else np.array(actions, np.float32, copy=True)
        out[..., idx] = out[..., idx] + sign * state[..., -1:, idx]
        return out

    def normalize(self, a):
        return 2 * (a - self.a_min) / (self.a_max - self.a_min).clamp_min(1e-6) - 1

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.a_min.cpu().numpy(), self.a_max.cpu().numpy()  # the model may live on a GPU
        return (x + 1) / 2 * (hi - lo) + lo


def depth_layers(color: np.ndarray, depth: np.ndarray, edges, depth_scale: float = 0.001) -> torch.Tensor:
    """H3DP's depth-aware layering: color (To, h, w, 3) uint8 and depth (To, h, w) uint16 ->
    (To, 4 K, h, w) float32, per layer k (depth in [edges[k], edges[k + 1]) m) its RGB in [0, 1]
    and depth in m / 2 where the pixel lies in the layer, 0 elsewhere. Pixels without depth (0)
    are in no layer."""
    rgb = torch.from_numpy(np.asarray(color, np.float32) / 255.0).permute(0, 3, 1, 2)  # (To, 3, h, w)
    d = torch.from_numpy(np.asarray(depth, np.float32) * depth_scale)[:, None]  # (To, 1, h, w), m
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = ((d >= lo) & (d < hi) & (d > 0)).float()
        out += [rgb * m, torch.clamp(d / 2.0, 0, 1) * m]
    return torch.cat(out, dim=1)


def save_checkpoint(model: GenerativePolicyModel, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``path`` (.safetensors): weights and normalization as tensors, the model config (and
    ``extra``, e.g. training state) as JSON metadata. No pickle: the file is safe to load."""
    import dataclasses
    import json

    from safetensors.torch import save_file

    meta = {"config": json.dumps(dataclasses.asdict(model.cfg)), "extra": json.dumps(extra or {})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[GenerativePolicyModel, dict]:
    """Model and ``extra`` from a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: not a robot_stack policy checkpoint.
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} is not a robot_stack policy checkpoint (no config metadata)")
    cfg_d = json.loads(meta["config"])
    cfg_d["image_hw"] = tuple(cfg_d["image_hw"])
    cfg_d["widths"] = tuple(cfg_d["widths"])
    for k in ("depth_layers", "points_lo", "points_hi", "action_names"):  # JSON lists back to the config's tuples
        if k in cfg_d:
            cfg_d[k] = tuple(cfg_d[k])
    cfg_d.setdefault("time_scale", 1000.0)  # checkpoints from before the field were trained at 1000
    model = GenerativePolicyModel(ModelConfig(**cfg_d))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), json.loads(meta.get("extra", "{}"))


class _Encode(torch.nn.Module):
    def __init__(self, model: GenerativePolicyModel):
        super().__init__()
        self.model = model

    def forward(self, *args):
        *images, proprio = args
        return self.model.net.encode(list(images), proprio)


class _Denoise(torch.nn.Module):
    def __init__(self, model: GenerativePolicyModel):
        super().__init__()
        self.model = model

    def forward(self, x, t, cond):
        return self.model.net(x, t, cond)


class WrongDevice(RuntimeError):
    """A tensor is not on the device its policy runs on (it would fail, or copy, on every call)."""


def check_device(module: torch.nn.Module, device: str) -> None:
    """Raise :class:`WrongDevice` naming the first parameter or buffer of ``module`` that is not on
    ``device`` ("cpu", "cuda", "cuda:N"; "cuda" matches any GPU index)."""
    want = torch.device(device)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.device.type != want.type or (want.index is not None and t.device.index != want.index):
            raise WrongDevice(f"{name} is on {t.device}, the policy runs on {device}")


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class TorchDenoiser:
    """Torch eager backend; the conditioning is computed once per chunk.

    Args:
        model: the model; moved to ``device``.
        device: "cpu", "cuda", "cuda:N" (None: CUDA when present).
        compile: "none" (eager) or a ``torch.compile`` mode for the encoder and the denoiser:
            "reduce-overhead" captures CUDA graphs on a GPU (kernel launches dominate one-step
            sampling there), "default"/"max-autotune" generate fused kernels (also on CPU). The
            first call of each batch size compiles (seconds to a minute).
    Raises:
        ValueError: an unknown compile mode. WrongDevice: a tensor left off ``device``.
    """

    def __init__(self, model: GenerativePolicyModel, device: str | None = None, compile: str = "none"):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        check_device(self.model, self.device)
        self.compile = compile
        self._encode, self._net = self.model.net.encode, self.model.net
        if compile != "none":
            self._encode = torch.compile(self.model.net.encode, mode=compile)
            self._net = torch.compile(self.model.net, mode=compile)

    def bind(self, images: list[torch.Tensor], proprio: np.ndarray):
        """The denoiser for one chunk: ``denoise(x_t, t) -> out`` on numpy arrays, and its
        differentiable form ``denoise.torch(x_t, t)`` on CPU tensors (RTC's exact guidance takes
        vector-Jacobian products through it; always the eager network)."""
        with torch.no_grad():  # (not inference_mode: the guided sampler differentiates through cond's users)
            cond = self._encode([i.to(self.device) for i in images], torch.from_numpy(proprio).to(self.device))
        if cond.device.type != torch.device(self.device).type:
            raise WrongDevice(f"the conditioning came out on {cond.device}, the policy runs on {self.device}")
        if self.compile != "none":
            cond = cond.clone()  # (a CUDA-graph output is overwritten by the next replay)

        def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return (
                    self._net(torch.from_numpy(x).to(self.device), torch.from_numpy(t).to(self.device), cond)
                    .cpu()
                    .numpy()
                )

        def differentiable(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.model.net(x.to(self.device), t.to(self.device), cond).cpu()

        denoise.torch = differentiable
        return denoise


class OnnxDenoiser:
    """ONNX Runtime backend on the exported encoder and denoiser graphs (see :func:`export_onnx`)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        avail = ort.get_available_providers()
        missing = [p for p in (providers or []) if p not in avail]
        wanted = (
            [p for p in providers if p in avail]
            if providers
            else [
                p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in avail
            ]
        )
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        enc, den = onnx_paths(path)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(enc), so, providers=wanted)
        self.denoiser = ort.InferenceSession(str(den), so, providers=wanted)
        self.providers = self.denoiser.get_providers()
        self.inputs = [i.name for i in self.encoder.get_inputs()]
        # ONNX Runtime falls back silently when a GPU provider is not built in or fails to load
        # (CUDA/cuDNN/TensorRT libraries missing): say which, and what runs instead
        dropped = missing + [p for p in wanted if p not in self.providers]
        self.fallback = None
        if dropped:
            self.fallback = (
                f"ONNX Runtime: {', '.join(dropped)} not usable here (available: {', '.join(avail)}; "
                f"GPU providers need the onnxruntime-gpu package and the CUDA, cuDNN and TensorRT "
                f"libraries); running on {self.providers[0]}"
            )
            log.warning("%s", self.fallback)
        lead = self.denoiser.get_inputs()[0].shape[0]  # a name (dynamic) or an int (an older batch-1 export)
        self.max_batch = lead if isinstance(lead, int) else 1 << 30

    def bind(self, images: list[torch.Tensor], proprio: np.ndarray):
        feeds = {n: i.numpy() for n, i in zip(self.inputs, images)}
        feeds[self.inputs[len(images)]] = proprio
        cond = self.encoder.run(None, feeds)[0]

        def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            return self.denoiser.run(None, {"x": x, "t": t, "cond": cond})[0]

        return denoise


def onnx_paths(path: str | Path) -> tuple[Path, Path]:
    """The encoder and denoiser graph files of an export named ``path`` (``X.onnx``)."""
    p = Path(path)
    return p.with_suffix(".encoder.onnx"), p.with_suffix(".denoiser.onnx")


def export_onnx(model: GenerativePolicyModel, path: str | Path, opset: int = 17) -> Path:
    """Export the policy as two graphs (any batch size: the leading axis is dynamic, for dynamic
    batching; traced at batch 1): ``X.encoder.onnx`` (images..., proprio -> cond)
    and ``X.denoiser.onnx`` (x, t, cond -> output); the sampler loop stays outside. Returns ``path``."""
    c = model.cfg
    model = model.eval()
    h, w = c.image_hw
    images = tuple(
        torch.zeros(1, c.obs_horizon, c.n_points, 3)
        if c.cameras[k] == "points"
        else torch.zeros(1, c.obs_horizon, ch, h, w)
        for k, ch in c.channels().items()
    )
    proprio = torch.zeros(1, c.obs_horizon, c.proprio_dim)
    enc, den = onnx_paths(path)
    enc_inputs = [f"image_{k}" for k in c.cameras] + ["proprio"]
    torch.onnx.export(
        _Encode(model),
        (*images, proprio),
        str(enc),
        input_names=enc_inputs,
        output_names=["cond"],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={n: {0: "batch"} for n in [*enc_inputs, "cond"]},
    )
    with torch.no_grad():
        cond = model.net.encode(list(images), proprio)
    x_dim = c.action_dim + int(c.rtc_max_prefix > 0)  # the prefix-mask channel (training-time RTC)
    t0 = torch.zeros(1, 2) if c.kind == "meanflow" else torch.zeros(1)  # MeanFlow: the interval (s, e)
    torch.onnx.export(
        _Denoise(model),
        (torch.zeros(1, c.horizon, x_dim), t0, cond),
        str(den),
        input_names=["x", "t", "cond"],
        output_names=["out"],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={n: {0: "batch"} for n in ("x", "t", "cond", "out")},
    )
    return Path(path)


class GenerativePolicy(Policy):
    """A trained model served through the :class:`Policy` interface.

    Args:
        model: the model (its config and normalization).
        backend: a TorchDenoiser or OnnxDenoiser.
        seed: seed of the sampling noise (deterministic chunks for tests).
        noise_scale: scale of the sampler's initial noise, >= 0 (a sampling temperature): 1 samples
            the learned distribution; 0 starts every chunk from the same point, so the sampler
            returns one deterministic chunk per observation (for a one-step flow or MeanFlow
            model, its estimate of the mean chunk; for DDIM, DDIM's deterministic map of x_T = 0).
    Raises:
        ValueError: a negative or non-finite ``noise_scale``.
    """

    def __init__(self, model: GenerativePolicyModel, backend, seed: int | None = None, noise_scale: float = 1.0):
        if not (np.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
        self.noise_scale = float(noise_scale)
        self.model, self.backend = model, backend
        self.metadata = model.metadata()
        cams = {}
        for cam, mode in model.cfg.cameras.items():
            hw = model.cfg.image_hw
            if mode in ("rgb", "rgbd"):
                cams[f"{cam}.color"] = ((*hw, 3), "|u1")
            if mode == "layered":
                cams[f"{cam}.color"] = ((*hw, 3), "|u1")
            if mode in ("depth", "rgbd", "layered"):
                cams[f"{cam}.depth"] = (hw, "<u2")
            if mode == "points":
                cams[f"{cam}.points"] = ((model.cfg.n_points, 3), "<f4")
        self.metadata = PolicyMetadata(**{**self.metadata.__dict__, "obs_shapes": {**self.metadata.obs_shapes, **cams}})
        self.rng = np.random.default_rng(seed)

    def predict(
        self,
        obs,
        committed_prefix=None,
        frozen: int | None = None,
        noise: np.ndarray | None = None,
        guidance: str = "auto",
    ):
        """Sample a chunk (H, D) float32 in world units.

        Args:
            obs: the validated observation window.
            committed_prefix: (k, D) the previous chunk's actions over this chunk's indices 0..k-1
                (RTC), or None.
            frozen: d, how many of them are committed (None: all k). The soft mask is
                ``rtc_guidance_weights(H, d, H - k)``: 1 on the first d, decaying to 0 at k.
            noise: (1, H, D) initial noise (None: drawn from the policy's generator).
            guidance: "auto" (exact VJP guidance where the backend differentiates and the
                sampler takes more than one step, else Jacobian-free), "exact", "jacobian_free" or
                "none" (ignore the prefix: the unguided sample, for comparisons). One step at the
                clip weight beta = 5 overshoots the previous chunk about 4-fold where W = 1 (the
                paper samples in 5 steps); one-step policies use the Jacobian-free pull, or
                training-time RTC.
        Raises:
            ValueError: "exact" on a backend without a differentiable denoiser; an unknown mode.
        """
        a, frozen_used = self._sample([obs], [committed_prefix], [frozen], noise, guidance)[0]
        self.last_frozen = frozen_used
        return a

    def predict_batch(
        self, obs, committed_prefixes=None, frozens=None, noise: np.ndarray | None = None, guidance: str = "auto"
    ):
        """B requests in one network evaluation per sampler step (dynamic batching); see
        :meth:`Policy.predict_batch`. Each request has its own noise row (drawn in request order from
        the policy's generator, so a batch draws what B single calls would), its own RTC prefix and
        d. Backends that cannot take a batch (an ONNX export of batch 1) are called per request.

        Args:
            noise: (B, H, D) initial noise (None: drawn).
        """
        b = len(obs)
        pres = committed_prefixes if committed_prefixes is not None else [None] * b
        frs = frozens if frozens is not None else [None] * b
        if b <= getattr(self.backend, "max_batch", b):
            return self._sample(obs, pres, frs, noise, guidance)
        return [
            self._sample([o], [p], [f], None if noise is None else noise[i : i + 1], guidance)[0]
            for i, (o, p, f) in enumerate(zip(obs, pres, frs))
        ]

    def _sample(
        self, obs: list, prefixes: list, frozens: list, noise: np.ndarray | None, guidance: str
    ) -> list[tuple[np.ndarray, int]]:
        """The sampler on B observation windows: [(chunk (H, D) float32 world units, d or -1)]."""
        from robot_stack.control.chunking import edge_padded, rtc_guidance_weights

        c = self.model.cfg
        b = len(obs)
        per_item = [self.model.images(o) for o in obs]
        images = [
            torch.cat([imgs[j] for imgs in per_item]) if b > 1 else per_item[0][j] for j in range(len(per_item[0]))
        ]
        denoise = self.backend.bind(images, np.stack([np.asarray(o["state"], np.float32) for o in obs]))
        if noise is None:  # drawn even at scale 0: the generator's sequence does not depend on the scale
            noise = (self.noise_scale * self.rng.standard_normal((b, c.horizon, c.action_dim))).astype(np.float32)
        if guidance not in ("auto", "exact", "jacobian_free", "none"):
            raise ValueError(f"guidance must be auto, exact, jacobian_free or none, got {guidance!r}")
        if guidance == "exact" and getattr(denoise, "torch", None) is None:
            raise ValueError(f"exact RTC guidance needs a differentiable backend, not {type(self.backend).__name__}")
        if guidance == "exact" and c.kind == "meanflow":
            raise ValueError("exact RTC guidance is not defined for meanflow jumps; use auto or jacobian_free")
        if guidance == "jacobian_free" or (guidance == "auto" and c.sample_steps == 1):
            denoise = _numpy_only(denoise)
        target = np.zeros((b, c.horizon, c.action_dim), np.float32)
        w = np.zeros((b, c.horizon, 1), np.float32)
        ds = np.zeros(b, int)
        guided = np.zeros(b, bool)
        for i, (pre_i, fr_i) in enumerate(zip(prefixes, frozens)):
            if pre_i is None or not len(pre_i) or guidance == "none":
                continue
            k = min(len(pre_i), c.horizon)
            d = k if fr_i is None else max(0, min(int(fr_i), k))
            pre = self.model.to_model_frame(np.asarray(pre_i[:k], np.float32), np.asarray(obs[i]["state"], np.float32))
            pre = torch.as_tensor(pre, device=self.model.a_min.device)
            target[i] = edge_padded(self.model.normalize(pre).cpu().numpy(), c.horizon)  # never zeros (= the mean)
            w[i, :, 0] = rtc_guidance_weights(c.horizon, d, c.horizon - k)
            w[i, k:, 0] = 0.0  # nothing to follow beyond the prefix
            ds[i], guided[i] = d, True
        if c.rtc_max_prefix:  # training-time RTC: the first d actions are given, the model continues them
            ds = np.minimum(ds, c.rtc_max_prefix)
            x = self.model.sampler.sample(prefix_conditioned(denoise, target, ds, c.horizon), noise, c.sample_steps)
            for i, d in enumerate(ds):
                x[i, :d] = target[i, :d]
        else:
            x = self.model.sampler.sample(denoise, noise, c.sample_steps, guide=(target, w) if guided.any() else None)
        return [
            (
                self.model.to_world(self.model.denormalize(x[i]), np.asarray(obs[i]["state"], np.float32)).astype(
                    np.float32
                ),
                int(ds[i]) if guided[i] else -1,
            )
            for i in range(b)
        ]


def prefix_conditioned(denoise, prefix: np.ndarray, d: np.ndarray, horizon: int):
    """A denoiser for a training-time-RTC model: per batch row i, the first ``d[i]`` noisy actions
    are replaced by the (normalized) ``prefix[i]`` (B, H, D) and a mask channel marks them, as in
    training. Numpy only: the prefix is conditioning, no guidance (and so no VJP) is needed."""
    d = np.asarray(d, int)
    mask = (np.arange(horizon)[None, :] < d[:, None]).astype(np.float32)[..., None]  # (B, H, 1)

    def f(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        x = np.where(mask > 0, prefix, x).astype(np.float32)
        return denoise(np.concatenate([x, mask], axis=-1).astype(np.float32), t)

    return f


def _numpy_only(denoise):
    """The same denoiser without its differentiable form (forces the Jacobian-free RTC path)."""
    return lambda x, t: denoise(x, t)
