"""Torch networks of the visuomotor policies (torchvision-free).

- :class:`ConvEncoder`: a ResNet-18-style CNN (BasicBlocks, GroupNorm instead of BatchNorm, as
  Diffusion Policy does for small batches and EMA) ending in spatial softmax keypoints (Levine et
  al. 2016, "End-to-End Training of Deep Visuomotor Policies"); input RGB (3), depth (1) or RGB-D (4).
- :class:`PointEncoder`: DP3's point-cloud encoder (Ze et al. 2024, "3D Diffusion Policy"; the
  MP1 encoder): a per-point MLP with LayerNorm, max-pooled over the points; input (B, N, 3).
- :class:`MultiScaleEncoder` and :func:`scale_weights`: H3DP's multi-scale visual features and
  their coarse-to-fine use by the denoiser (Lu et al. 2025, arXiv 2505.07819; see ModelConfig).
- :class:`ConditionalUnet1D`: Diffusion Policy's 1-D temporal U-Net over the action sequence
  (Chi et al. 2023), every residual block FiLM-conditioned (Perez et al. 2018) on the observation
  features and a sinusoidal embedding of the diffusion / flow time.
- :class:`PolicyNet`: per-camera encoders + proprioception -> conditioning; ``forward(x_t, t, obs)``
  predicts the denoiser output (noise for DDPM/DDIM, velocity for flow matching).

Shapes: actions (B, H, D); images (B, To, C, h, w) float32 in [0, 1] (depth in metres / 2);
proprioception (B, To, P); t (B,) float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = group_norm(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = group_norm(cout)
        self.skip = (
            None
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout))
        )

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        y = self.n2(self.c2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class SpatialSoftmax(nn.Module):
    """(B, C, h, w) feature maps -> (B, 2C) expected keypoint coordinates in [-1, 1]."""

    def forward(self, x):
        b, c, h, w = x.shape
        p = F.softmax(x.reshape(b, c, h * w), dim=-1)
        ys = torch.linspace(-1, 1, h, device=x.device).repeat_interleave(w)
        xs = torch.linspace(-1, 1, w, device=x.device).repeat(h)
        return torch.cat([(p * xs).sum(-1), (p * ys).sum(-1)], dim=-1)


class MultiScaleEncoder(nn.Module):
    """The ResNet-18 layout of :class:`ConvEncoder`, read out at its last ``scales`` stages (strides
    32, 16, 8 for three): each stage's maps -> 32 keypoints by spatial softmax -> Linear(out_dim).
    Out: (B, scales * out_dim), coarse (deepest) first. H3DP's multi-scale representation, with
    keypoint read-outs in place of its feature-map pyramid (a simplification)."""

    def __init__(self, in_ch: int, base: int = 16, out_dim: int = 64, scales: int = 3):
        super().__init__()
        if not 1 <= scales <= 4:
            raise ValueError(f"scales must be 1..4, got {scales}")
        w = [base, base * 2, base * 4, base * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, w[0], 7, 2, 3, bias=False), group_norm(w[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.stages, c = nn.ModuleList(), w[0]
        for i, cw in enumerate(w):
            self.stages.append(nn.Sequential(BasicBlock(c, cw, 1 if i == 0 else 2), BasicBlock(cw, cw)))
            c = cw
        self.scales = scales
        self.keypoints = nn.ModuleList(nn.Conv2d(w[i], 32, 1) for i in range(4 - scales, 4))
        self.pool = SpatialSoftmax()
        self.outs = nn.ModuleList(nn.Linear(64, out_dim) for _ in range(scales))

    def forward(self, x):
        h, maps = self.stem(x), []
        for st in self.stages:
            h = st(h)
            maps.append(h)
        feats = [o(self.pool(k(m))) for k, o, m in zip(self.keypoints, self.outs, maps[4 - self.scales :])]
        return torch.cat(feats[::-1], dim=-1)  # coarse (deepest) first


def scale_weights(progress: torch.Tensor, scales: int, width: float = 0.25) -> torch.Tensor:
    """Coarse-to-fine weights (B, scales) of multi-scale features at denoising ``progress`` (B,) in
    [0, 1] (0: pure noise, 1: clean): a Gaussian bump per scale centred at s / (scales - 1), coarse
    (s = 0) at the noisy start and fine at the end, normalised to mean 1 so the conditioning keeps
    its scale. H3DP conditions early denoising steps on coarse features and later ones on fine
    features; this is the soft form of that schedule."""
    if scales == 1:
        return torch.ones(len(progress), 1, device=progress.device)
    c = torch.linspace(0, 1, scales, device=progress.device)
    w = torch.exp(-0.5 * ((progress[:, None].float() - c[None]) / width) ** 2)
    return w / w.mean(dim=1, keepdim=True)


class PointEncoder(nn.Module):
    """DP3 encoder: points (B, N, 3) in the robot base frame, m -> (B, out_dim). Per point
    Linear-LayerNorm-ReLU 3 -> 64 -> 128 -> 256, max over points, then Linear (Ze et al. 2024,
    sec. 3.2; order-invariant, as PointNet)."""

    def __init__(self, out_dim: int = 64, widths=(64, 128, 256)):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Linear(c, w), nn.LayerNorm(w), nn.ReLU()]
            c = w
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Linear(c, out_dim), nn.LayerNorm(out_dim))

    def forward(self, pts):
        return self.out(self.mlp(pts).max(dim=1).values)


def dispersive_loss(z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Dispersive loss on embeddings z (B, F) (Wang & He 2025, "Diffuse and Disperse", InfoNCE-L2
    form; MP1 applies it to the state embeddings): log of the batch mean of exp(-d_ij / tau), d_ij
    the mean squared difference of z_i and z_j over the F features. 0 when all embeddings are
    equal, lower as they spread; no positive pairs needed."""
    d = torch.cdist(z, z).pow(2) / z.shape[1]
    return torch.logsumexp(-d.flatten() / tau, dim=0) - math.log(d.numel())


class ConvEncoder(nn.Module):
    """ResNet-18 layout (2-2-2-2 BasicBlocks) with width ``base``; out: (B, out_dim)."""

    def __init__(self, in_ch: int = 3, base: int = 16, out_dim: int = 64):
        super().__init__()
        w = [base, base * 2, base * 4, base * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, w[0], 7, 2, 3, bias=False), group_norm(w[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, c = [], w[0]
        for i, cw in enumerate(w):
            layers += [BasicBlock(c, cw, 1 if i == 0 else 2), BasicBlock(cw, cw)]
            c = cw
        self.layers = nn.Sequential(*layers)
        self.keypoints = nn.Conv2d(c, 32, 1)
        self.pool = SpatialSoftmax()
        self.out = nn.Linear(64, out_dim)

    def forward(self, x):
        return self.out(self.pool(self.keypoints(self.layers(self.stem(x)))))


def time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (B,) -> (B, dim) (Vaswani et al. 2017), of ``scale * t``: with t in
    [0, 1] and scale 1000 the fastest feature turns 1000 rad per unit of t (DDPM's integer steps);
    scale 1 keeps the embedding smooth in t, which MeanFlow needs (its target holds du/dt)."""
    half = dim // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t[:, None].float() * scale * f[None]
    return torch.cat([a.sin(), a.cos()], dim=-1)


class FiLMBlock(nn.Module):
    """Conv1d residual block; the conditioning vector sets per-channel scale and bias (FiLM)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, k: int = 5):
        super().__init__()
        self.c1 = nn.Conv1d(cin, cout, k, padding=k // 2)
        self.n1 = group_norm(cout)
        self.c2 = nn.Conv1d(cout, cout, k, padding=k // 2)
        self.n2 = group_norm(cout)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cond):
        y = F.mish(self.n1(self.c1(x)))
        scale, bias = self.film(F.mish(cond)).unsqueeze(-1).chunk(2, dim=1)
        y = y * (1 + scale) + bias
        y = F.mish(self.n2(self.c2(y)))
        return y + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """1-D U-Net over (B, D, H) with FiLM conditioning; H must be divisible by 4."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        widths=(64, 128, 256),
        t_dim: int = 64,
        in_dim: int | None = None,
        t_scale: float = 1000.0,
    ):
        super().__init__()
        self.t_dim, self.t_scale = t_dim, t_scale
        cd = cond_dim + t_dim
        self.down = nn.ModuleList()
        c = in_dim or action_dim  # input channels: the actions, plus a prefix-mask channel (training-time RTC)
        for i, w in enumerate(widths):
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMBlock(c, w, cd),
                        FiLMBlock(w, w, cd),
                        nn.Conv1d(w, w, 3, 2, 1) if i < len(widths) - 1 else nn.Identity(),
                    ]
                )
            )
            c = w
        self.mid = nn.ModuleList([FiLMBlock(c, c, cd), FiLMBlock(c, c, cd)])
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(
                nn.ModuleList([nn.ConvTranspose1d(c, c, 4, 2, 1), FiLMBlock(c + w, w, cd), FiLMBlock(w, w, cd)])
            )
            c = w
        self.final = nn.Sequential(nn.Conv1d(c, c, 5, padding=2), group_norm(c), nn.Mish(), nn.Conv1d(c, action_dim, 1))

    def forward(self, x, t, cond):
        """x (B, H, in_dim), t (B,) or (B, 2), cond (B, cond_dim) -> (B, H, D).

        t (B, 2) is MeanFlow's interval (start, end): half the time embedding is the start, half the
        interval's length (Geng et al. 2025 condition on (t, t - r) the same way)."""
        if t.ndim == 2:
            half = self.t_dim // 2
            temb = torch.cat(
                [time_embedding(t[:, 0], half, self.t_scale), time_embedding(t[:, 1] - t[:, 0], half, self.t_scale)],
                dim=-1,
            )
        else:
            temb = time_embedding(t, self.t_dim, self.t_scale)
        cond = torch.cat([cond, temb], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for b1, b2, down in self.down:
            h = b2(b1(h, cond), cond)
            skips.append(h)
            h = down(h)
        for b in self.mid:
            h = b(h, cond)
        skips.pop()  # the deepest level has no upsampling partner
        for upsample, b1, b2 in self.up:
            h = upsample(h)
            h = b2(b1(torch.cat([h, skips.pop()], dim=1), cond), cond)
        return self.final(h).transpose(1, 2)


class PolicyNet(nn.Module):
    """Observation encoders + conditional U-Net.

    Args:
        cameras: camera key -> input channels (3 RGB, 1 depth, 4 RGB-D); one encoder per camera.
        proprio_dim: P, size of the low-dimensional state per step.
        obs_horizon: To; action_dim: D.
    """

    def __init__(
        self,
        cameras: dict[str, int],
        proprio_dim: int,
        obs_horizon: int,
        action_dim: int,
        feat_dim: int = 64,
        enc_base: int = 16,
        widths=(64, 128, 256),
        prefix_mask: bool = False,
        point_cameras: tuple[str, ...] = (),
        multiscale_cameras: tuple[str, ...] = (),
        scales: int = 3,
        progress_from: str = "flow",
        t_scale: float = 1000.0,
    ):
        super().__init__()
        self.cameras = list(cameras)
        self.encoders = nn.ModuleDict(
            {
                k: PointEncoder(feat_dim)
                if k in point_cameras
                else MultiScaleEncoder(c, enc_base, feat_dim, scales)
                if k in multiscale_cameras
                else ConvEncoder(c, enc_base, feat_dim)
                for k, c in cameras.items()
            }
        )
        widths_per_cam = [feat_dim * (scales if k in multiscale_cameras else 1) for k in cameras]
        self.step_dim = sum(widths_per_cam) + proprio_dim
        self.obs_horizon, self.scales, self.feat_dim = obs_horizon, scales, feat_dim
        #: (offset, camera) of each multi-scale block inside one step of the conditioning
        offs = [sum(widths_per_cam[:i]) for i in range(len(widths_per_cam))]
        self.gated = [o for o, k in zip(offs, cameras) if k in multiscale_cameras]
        if progress_from not in ("flow", "ddim"):
            raise ValueError(f"progress_from must be flow or ddim, got {progress_from!r}")
        self.progress_from = progress_from
        cond_dim = obs_horizon * self.step_dim
        self.unet = ConditionalUnet1D(
            action_dim, cond_dim, widths, in_dim=action_dim + int(prefix_mask), t_scale=t_scale
        )

    def encode(self, images: list[torch.Tensor], proprio: torch.Tensor) -> torch.Tensor:
        """images: per camera (B, To, C, h, w), or (B, To, N, 3) point clouds; proprio (B, To, P)
        -> cond (B, cond_dim)."""
        b, to = proprio.shape[:2]
        feats = [self.encoders[k](img.flatten(0, 1)).reshape(b, to, -1) for k, img in zip(self.cameras, images)]
        return torch.cat(feats + [proprio], dim=-1).flatten(1)

    def forward(self, x, t, cond):
        if self.gated:
            cond = self._coarse_to_fine(cond, t)
        return self.unet(x, t, cond)

    def _coarse_to_fine(self, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Weight each multi-scale block by :func:`scale_weights` at this step's progress (flow,
        MeanFlow: t, the interval's start; DDIM: 1 - k/K)."""
        tt = t[:, 0] if t.ndim == 2 else t
        progress = 1.0 - tt if self.progress_from == "ddim" else tt
        w = scale_weights(progress, self.scales)  # (B, S)
        gate = torch.ones(self.step_dim, device=cond.device).repeat(len(cond), 1)  # (B, step_dim)
        f = self.feat_dim
        parts, last = [], 0
        for off in self.gated:
            parts += [gate[:, last:off], w.repeat_interleave(f, dim=1)]
            last = off + self.scales * f
        parts.append(gate[:, last:])
        gate = torch.cat(parts, dim=1)
        return (cond.reshape(len(cond), self.obs_horizon, self.step_dim) * gate[:, None]).reshape(cond.shape)
