"""Generative samplers over action chunks, written once for every backend.

The network is an opaque callable ``denoise(x_t, t) -> output`` on numpy arrays (torch eager or
ONNX Runtime behind it), so the ONNX export is "encoder + one denoiser step with the loop outside"
and the loop is the same code for both.

- :class:`DDIM`: DDPM training (noise prediction, squared-cosine schedule, K steps; Ho et al. 2020,
  Nichol & Dhariwal 2021) and deterministic DDIM sampling with any step count (Song et al. 2021).
- :class:`Flow`: flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): x_t =
  (1 - t) noise + t x1, the network predicts v = x1 - noise; Euler sampling with few steps or
  one step (the MP1 / consistency-style regime when trained for it).

Real-time chunking (Black et al. 2025): with a committed prefix and RTC weights W (H,), each
sampling step pulls the current estimate of the clean chunk toward the prefix,
``x1_hat <- x1_hat + W * (prefix - x1_hat)``, and continues from the corrected estimate. This is
the Jacobian-free form of RTC's soft-masked guidance (the guided estimate with the guidance weight
at its clip value), which applies to both samplers.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Denoise = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _pad_prefix(prefix: np.ndarray | None, weights: np.ndarray | None, shape) -> tuple[np.ndarray, np.ndarray] | None:
    """Guidance target (B, H, D) and mask (1, H, 1).

    ``prefix`` (k, D) holds the actions the new chunk should follow: the committed ones first, and
    optionally the rest of the previous chunk. ``weights`` (H,) is the RTC soft mask (default: 1 on
    the prefix); positions beyond the prefix get weight 0 (nothing to follow there).
    """
    if prefix is None or len(prefix) == 0:
        return None
    B, H, D = shape
    k = min(len(prefix), H)
    target = np.zeros((B, H, D), np.float32)
    target[:, :k] = prefix[:k]
    w = np.zeros(H, np.float32)
    w[:k] = 1.0 if weights is None else np.asarray(weights, np.float32)[:k]
    return target, w[None, :, None]


class DDIM:
    """Diffusion schedule with K training steps (squared-cosine alphas)."""

    def __init__(self, train_steps: int = 100):
        self.K = train_steps
        s = 0.008
        t = np.linspace(0, train_steps, train_steps + 1) / train_steps
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
        self.abar = np.cumprod(1 - betas)  # (K,)

    def training_pair(self, x0, noise, k):
        """x_t and the target (noise) for integer steps k (torch or numpy arrays, batch-first)."""
        a = self.abar[k] if isinstance(k, np.ndarray) else k.new_tensor(self.abar, dtype=x0.dtype)[k]
        a = a.reshape(-1, *([1] * (x0.ndim - 1)))
        return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise, noise

    def time_input(self, k) -> np.ndarray:
        return np.asarray(k, np.float32) / self.K

    def sample(self, denoise: Denoise, noise: np.ndarray, steps: int = 10, prefix: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> np.ndarray:
        """Deterministic DDIM (eta = 0) from ``noise`` (B, H, D) in ``steps`` steps; the clean-chunk
        estimate is clipped to the normalized action range [-1, 1] (Diffusion Policy's clip_sample)."""
        guide = _pad_prefix(prefix, weights, noise.shape)
        ks = np.linspace(self.K - 1, 0, steps).round().astype(int)
        x = noise.astype(np.float32)
        x0 = x
        for i, k in enumerate(ks):
            a = self.abar[k]
            eps = denoise(x, np.full(len(x), self.time_input(k), np.float32))
            x0 = np.clip((x - math.sqrt(1 - a) * eps) / math.sqrt(a), -1.0, 1.0)  # actions live in [-1, 1]
            if guide is not None:
                x0 = x0 + guide[1] * (guide[0] - x0)
                eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            a_prev = self.abar[ks[i + 1]] if i + 1 < len(ks) else 1.0
            x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).astype(np.float32)
        return x0.astype(np.float32)


class Flow:
    """Flow matching with Euler sampling."""

    def training_pair(self, x1, noise, t):
        """x_t and the target velocity for times t (B,) in [0, 1]."""
        tt = t.reshape(-1, *([1] * (x1.ndim - 1)))
        return (1 - tt) * noise + tt * x1, x1 - noise

    def sample(self, denoise: Denoise, noise: np.ndarray, steps: int = 1, prefix: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> np.ndarray:
        """Euler integration from t = 0 (noise) to t = 1 in ``steps`` steps (1 = one-step)."""
        guide = _pad_prefix(prefix, weights, noise.shape)
        x = noise.astype(np.float32)
        for i in range(steps):
            t = i / steps
            v = denoise(x, np.full(len(x), t, np.float32))
            if guide is not None:
                x1 = x + (1 - t) * v
                x1 = x1 + guide[1] * (guide[0] - x1)
                v = (x1 - x) / (1 - t)
            x = (x + v / steps).astype(np.float32)
        return x
