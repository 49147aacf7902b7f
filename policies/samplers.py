"""Generative samplers over action chunks, written once for every backend.

The network is an opaque callable ``denoise(x_t, t) -> output`` on numpy arrays (torch eager or
ONNX Runtime behind it), so the ONNX export is "encoder + one denoiser step with the loop outside"
and the loop is the same code for both.

- :class:`DDIM`: DDPM training (noise prediction, squared-cosine schedule, K steps; Ho et al. 2020,
  Nichol & Dhariwal 2021) and deterministic DDIM sampling with any step count (Song et al. 2021).
- :class:`MeanFlow`: the average velocity over an interval (Geng et al. 2025, arXiv 2505.13447;
  the MP1 policy, arXiv 2507.10543): one network evaluation jumps from noise to the action chunk.
- :class:`Flow`: flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): x_t =
  (1 - t) noise + t x1, the network predicts v = x1 - noise; Euler sampling with few steps or
  one step (the MP1 / consistency-style regime when trained for it).

Real-time chunking, inference-time (Black, Galliker and Levine 2025, arXiv 2506.07339): the
request brings the previous chunk's actions Y over the overlap and the soft mask W (H,)
(``robot_stack.control.chunking.rtc_guidance_weights``: 1 on the d frozen actions, decaying to 0
where the previous chunk ends). Two forms:

- exact, pseudo-inverse guidance (the paper's Algorithm 1), when the backend can differentiate the
  denoiser (``denoise.torch``, torch eager): at each step the clean estimate x1_hat(x_t) is
  compared with Y, the masked error e = W * (Y - x1_hat) is pulled back through the denoiser with a
  vector-Jacobian product g = e^T d x1_hat / d x_t, and the step moves by
  ``v + min(beta, (1 - t) / (t r_t^2)) g`` with r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2) (flow).
  DDIM (our adaptation; the paper states the flow form): in flow coordinates A = x_t / (sqrt(a) +
  sqrt(1 - a)), t = sqrt(a) / (sqrt(a) + sqrt(1 - a)), the clean estimate moves by what that
  guided Euler step adds, ``(t_next - t) min(beta, ...) VJP_A``, before DDIM's own step. The VJP
  through an epsilon-predictor is only well conditioned for a trained one (an untrained network's
  clean estimate x_t / sqrt(a) has a huge Jacobian at high noise);
- Jacobian-free (ONNX Runtime, where no VJP is exported): the clean estimate itself is pulled
  toward Y, ``x1_hat <- x1_hat + W * (Y - x1_hat)`` (the guidance with d x1_hat / d x_t taken as
  the identity and the weight at the value that lands exactly on Y). tests/test_generative.py
  measures how far it lies from the exact form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


#: RTC's guidance weight clip beta (Black et al. 2025 use 5)
RTC_BETA = 5.0


def _vjp_step(fn, x: np.ndarray, target: np.ndarray, w: np.ndarray):
    """Torch: (output of ``fn`` at ``x``, clean estimate, VJP of the masked error through the clean
    estimate). ``fn(x_t) -> (out, clean)`` is differentiable; arrays (B, H, D) float32."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    with torch.enable_grad():
        out, clean = fn(xt)
        err = torch.from_numpy(w) * (torch.from_numpy(target) - clean)
        (g,) = torch.autograd.grad(clean, xt, grad_outputs=err)
    return out.detach().cpu().numpy(), clean.detach().cpu().numpy(), g.cpu().numpy()


def guidance_weight(t: float, beta: float = RTC_BETA) -> float:
    """RTC's pseudo-inverse guidance weight at flow time t in [0, 1) (0 = noise):
    ``min(beta, (1 - t) / (t r_t^2))``, r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2); beta at t = 0."""
    if t <= 0:
        return beta
    r2 = (1 - t) ** 2 / (t**2 + (1 - t) ** 2)
    return min(beta, (1 - t) / (t * r2))


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
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise, noise

    def time_input(self, k) -> np.ndarray:
        return np.asarray(k, np.float32) / self.K

    def sample(
        self,
        denoise: Denoise,
        noise: np.ndarray,
        steps: int = 10,
        prefix: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        beta: float = RTC_BETA,
        guide: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Deterministic DDIM (eta = 0) from ``noise`` (B, H, D) in ``steps`` steps; the clean-chunk
        estimate is clipped to the normalized action range [-1, 1] (Diffusion Policy's clip_sample).
        With ``prefix`` (k, D) and ``weights`` (H,): RTC guidance (module doc), exact when
        ``denoise`` has a differentiable ``torch`` form. ``guide``: per batch row target (B, H, D) and
        mask (B, H, 1), in place of ``prefix``/``weights`` (a batch of requests with their own prefixes)."""
        guide = guide if guide is not None else _pad_prefix(prefix, weights, noise.shape)
        exact = guide is not None and getattr(denoise, "torch", None) is not None
        # rows with a prefix; the others (weight 0 everywhere, in a batch of mixed requests) keep the
        # unguided step exactly, the network's own noise estimate included
        rows = None if guide is None else guide[1].reshape(len(guide[1]), -1).any(1)[:, None, None]
        ks = np.linspace(self.K - 1, 0, steps).round().astype(int)
        x = noise.astype(np.float32)
        x0 = x
        for i, k in enumerate(ks):
            a = self.abar[k]
            t_in = np.full(len(x), self.time_input(k), np.float32)
            if exact:
                import torch

                def fn(xt, a=a, t_in=t_in):
                    e = denoise.torch(xt, torch.from_numpy(t_in))
                    return e, torch.clamp((xt - math.sqrt(1 - a) * e) / math.sqrt(a), -1.0, 1.0)

                eps, x0, g = _vjp_step(fn, x, *guide)
                # in flow coordinates A = x / sc, tau = sqrt(a) / sc (sc = sqrt(a) + sqrt(1 - a)), the
                # guided Euler step moves the clean estimate by d_tau * weight(tau) * VJP_A, VJP_A = sc * g
                a_next = self.abar[ks[i + 1]] if i + 1 < len(ks) else 1.0
                sc, sc_next = math.sqrt(a) + math.sqrt(1 - a), math.sqrt(a_next) + math.sqrt(1 - a_next)
                tau, tau_next = math.sqrt(a) / sc, math.sqrt(a_next) / sc_next
                x0 = np.clip(x0 + (tau_next - tau) * guidance_weight(tau, beta) * sc * g, -1.0, 1.0)
                eps = np.where(rows, (x - math.sqrt(a) * x0) / math.sqrt(1 - a), eps)
            else:
                eps = denoise(x, t_in)
                x0 = np.clip((x - math.sqrt(1 - a) * eps) / math.sqrt(a), -1.0, 1.0)  # actions live in [-1, 1]
                if guide is not None:
                    x0 = x0 + guide[1] * (guide[0] - x0)
                    eps = np.where(rows, (x - math.sqrt(a) * x0) / math.sqrt(1 - a), eps)
            a_prev = self.abar[ks[i + 1]] if i + 1 < len(ks) else 1.0
            x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).astype(np.float32)
        return x0.astype(np.float32)


class Flow:
    """Flow matching with Euler sampling."""

    def training_pair(self, x1, noise, t):
        """x_t and the target velocity for times t (B,) in [0, 1]."""
        tt = t.reshape(-1, *([1] * (x1.ndim - 1)))
        return (1 - tt) * noise + tt * x1, x1 - noise

    def sample(
        self,
        denoise: Denoise,
        noise: np.ndarray,
        steps: int = 1,
        prefix: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        beta: float = RTC_BETA,
        guide: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Euler integration from t = 0 (noise) to t = 1 in ``steps`` steps (1 = one-step). With
        ``prefix`` (k, D) and ``weights`` (H,): RTC guidance (module doc), exact when ``denoise``
        has a differentiable ``torch`` form. ``guide``: per batch row target (B, H, D) and mask
        (B, H, 1), in place of ``prefix``/``weights``."""
        guide = guide if guide is not None else _pad_prefix(prefix, weights, noise.shape)
        exact = guide is not None and getattr(denoise, "torch", None) is not None
        x = noise.astype(np.float32)
        for i in range(steps):
            t = i / steps
            t_in = np.full(len(x), t, np.float32)
            if exact:  # Black et al. 2025, Algorithm 1: v + min(beta, (1-t)/(t r^2)) * VJP
                import torch

                def fn(xt, t=t, t_in=t_in):
                    v = denoise.torch(xt, torch.from_numpy(t_in))
                    return v, xt + (1 - t) * v

                v, _, g = _vjp_step(fn, x, *guide)
                v = v + guidance_weight(t, beta) * g
            else:
                v = denoise(x, t_in)
            if guide is not None and not exact:
                x1 = x + (1 - t) * v
                x1 = x1 + guide[1] * (guide[0] - x1)
                v = (x1 - x) / (1 - t)
            x = (x + v / steps).astype(np.float32)
        return x


class MeanFlow:
    """MeanFlow (Geng et al. 2025, arXiv 2505.13447), in :class:`Flow`'s convention: x_tau =
    (1 - tau) noise + tau x1, tau = 0 noise, 1 data, v = x1 - noise. The network predicts the
    average velocity u(x_s, s, e) over [s, e] at the interval's start, so that
    ``x_e = x_s + (e - s) u(x_s, s, e)``; the denoiser's time input is (B, 2) = (s, e).

    Training target (the MeanFlow identity, here for the start of the interval, differentiating
    (e - s) u = integral of v over [s, e] in s): ``u = v + (e - s) (v . d_x u + d_s u)``, the total
    derivative taken with a Jacobian-vector product of the network (tangent (v, 1, 0)), the target
    detached. With s = e the target is v (flow matching).
    """

    def training_pair(self, x1, noise, s, e):
        """x_s and v for interval starts s and ends e (B,)."""
        ss = s.reshape(-1, *([1] * (x1.ndim - 1)))
        return (1 - ss) * noise + ss * x1, x1 - noise

    def sample(
        self,
        denoise: Denoise,
        noise: np.ndarray,
        steps: int = 1,
        prefix: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        beta: float = RTC_BETA,
        guide: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """``steps`` jumps over equal intervals from noise (1: one network evaluation). With a prefix
        (RTC) the last jump's landing point, the clean chunk, is pulled toward it (the Jacobian-free
        form; there is no exact form for a jump that covers the rest of the path)."""
        guide = guide if guide is not None else _pad_prefix(prefix, weights, noise.shape)
        x = noise.astype(np.float32)
        for i in range(steps):
            s, e = i / steps, (i + 1) / steps
            u = denoise(x, np.tile(np.array([[s, e]], np.float32), (len(x), 1)))
            x = (x + (e - s) * u).astype(np.float32)
        if guide is not None:
            x = (x + guide[1] * (guide[0] - x)).astype(np.float32)
        return x
