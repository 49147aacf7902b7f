"""Training the fast layer of slow-fast control (``robot-stack train-fast``;
``robot_stack.control.fast`` says what it is and what it takes from RDP, arXiv 2503.02881).

The slow policy is frozen. For every observation anchor t_obs of the demonstrations (built as for
slow training, ``policies.training.build_samples``) the slow policy plans its chunk; the chunk is
what the controller would execute from t_obs + ``latency_s`` until the next slow tick
(1 / ``slow_rate_hz`` later). At the fast ticks in that window (``rate_hz``) where the tool is in
contact (recorded force above ``contact_n``) the fast network's input is
:func:`robot_stack.control.fast.fast_features` of the recorded wrench window and the gripper
width; its target is the demonstrated action's velocity minus the planned velocity (central
differences over one fast period: the correction rate the slow plan misses). An MLP (tanh, two
hidden layers) is fit with Adam on MSE; whole episodes are held out and the target's RMS before
(no correction) and after is reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from robot_stack.control.fast import FastCorrector, fast_features

from .generative import GenerativePolicy, TorchDenoiser, load_checkpoint
from .training import _batch_images, actions_at, build_samples


def slow_plans(model, samples, batch: int = 32, seed: int = 0) -> np.ndarray:
    """(N, H, 8) the slow policy's chunk for every sample in the base frame (no augmentation)."""
    policy = GenerativePolicy(model, TorchDenoiser(model, device="cpu"), seed=seed)
    c, out = model.cfg, []
    for b0 in range(0, len(samples.state), batch):
        rows = np.arange(b0, min(b0 + batch, len(samples.state)))
        imgs = _batch_images(samples, rows, c.mode, 0, None, depth_edges=c.depth_layers)
        denoise = policy.backend.bind([imgs], samples.state[rows])
        noise = policy.rng.standard_normal((len(rows), c.horizon, c.action_dim)).astype(np.float32)
        x = model.sampler.sample(denoise, noise, c.sample_steps)
        out.extend(model.to_world(model.denormalize(x[i]), samples.state[r]) for i, r in enumerate(rows))
    return np.array(out)


def fast_dataset(
    paths: list[Path],
    model,
    window: int = 5,
    rate_hz: float = 50.0,
    slow_rate_hz: float = 10.0,
    latency_s: float = 0.05,
    contact_n: float = 0.5,
    console=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X (M, 6 window + 1) float32, Y (M, 3) velocity residuals m/s, episode (M,)) from the
    contact samples of ``paths``.

    Raises:
        DatasetError: an episode lacks a wrench (recorded on an arm without a force/torque measurement).
    """
    from robot_stack.data.dataset import DatasetError, open_episode

    ms = model.cfg
    xs, ys, eps = [], [], []
    per_ns, dt_ns = int(1e9 / rate_hz), int(round(model.cfg.dt * 1e9))
    ticks = np.arange(int(round(rate_hz / slow_rate_hz))) * per_ns + int(latency_s * 1e9)
    for e_i, path in enumerate(paths):
        s = build_samples([path], ms)
        plans = slow_plans(model, s)
        ep = open_episode(path)
        rs, a = ep.load("robot_state"), ep.load("action")
        if "wrench" not in rs or not np.isfinite(rs["wrench"]).all():
            raise DatasetError(f"{path}: no wrench recorded (the fast layer learns from the wrist force/torque)")
        st = rs["stamp_ns"]
        for k in range(len(s.state)):
            t_obs = int(s.t_obs[k])
            plan_t = t_obs + np.arange(model.cfg.horizon) * dt_ns
            for t in t_obs + ticks:
                if t - (window - 1) * per_ns < st[0] or t > st[-1]:
                    continue
                hist = t - np.arange(window)[::-1] * per_ns
                w = rs["wrench"][np.clip(np.searchsorted(st, hist, side="right") - 1, 0, len(st) - 1)]
                if np.linalg.norm(w[-1, :3]) <= contact_n:
                    continue
                tt = np.array([t - per_ns, t + per_ns])
                plan = np.stack([np.interp(tt, plan_t, plans[k][:, j]) for j in range(3)], 1)
                demo = actions_at(a["target_ns"], a["pose"], a["gripper"], tt)[:, :3]
                xs.append(fast_features(w, float(np.interp(t, st, rs["gripper_width"]))))
                ys.append(((demo[1] - demo[0]) - (plan[1] - plan[0])) / (2 * per_ns / 1e9))
                eps.append(e_i)
        if console is not None:
            console.print(f"  {path.name}: {len(s.state)} slow plans, {sum(1 for e in eps if e == e_i)} fast samples")
    return np.array(xs, np.float32), np.array(ys, np.float32), np.array(eps)


def train_fast(
    policy_path: str | Path,
    episodes: list[Path],
    out: str | Path,
    window: int = 5,
    rate_hz: float = 50.0,
    steps: int = 3000,
    hidden: int = 64,
    val_fraction: float = 0.15,
    seed: int = 0,
    max_correction_m: float = 0.03,
    console=None,
) -> dict:
    """Fit the fast layer for the slow policy ``policy_path`` on ``episodes``; write ``out``
    (.safetensors, :meth:`FastCorrector.save`). Returns a summary: the velocity residual's RMS
    (mm/s) on the held-out episodes with no correction and with the fast layer, samples, time.

    Raises:
        DatasetError: no contact samples (demonstrations that never touch anything)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, _ = load_checkpoint(policy_path)
    x, y, ep = fast_dataset(list(episodes), model, window, rate_hz, console=console)
    if not len(x):
        from robot_stack.data.dataset import DatasetError

        raise DatasetError("no contact in the demonstrations: the fast layer learns from the wrench in contact")
    n_ep = int(ep.max()) + 1
    n_val = max(1, int(round(n_ep * val_fraction))) if n_ep > 1 else 0
    val = ep >= n_ep - n_val
    tr = ~val if n_val else np.ones(len(ep), bool)
    x_mean, x_std = x[tr].mean(0), x[tr].std(0) + 1e-3
    y_scale = np.maximum(y[tr].std(0), 1e-3)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 3),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt = torch.from_numpy((x - x_mean) / x_std)
    yt = torch.from_numpy(y / y_scale)
    idx = np.flatnonzero(tr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = torch.from_numpy(rng.choice(idx, size=min(256, len(idx))))
        loss = torch.nn.functional.mse_loss(net(xt[b]), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    fc = FastCorrector(
        [(m.weight.detach().numpy().astype(np.float64), m.bias.detach().numpy().astype(np.float64)) for m in layers],
        x_mean.astype(np.float64),
        x_std.astype(np.float64),
        y_scale.astype(np.float64),
        window,
        rate_hz,
        max_correction_m,
    )
    fc.save(out)
    rows = val if n_val else tr
    pred = np.array([fc(v) for v in x[rows]])
    summary = {
        "fast_samples": int(len(x)),
        "val_episodes": int(n_val),
        "residual_rms_mm_s_without": float(np.sqrt((y[rows] ** 2).sum(1).mean()) * 1e3),
        "residual_rms_mm_s_with": float(np.sqrt(((y[rows] - pred) ** 2).sum(1).mean()) * 1e3),
        "residual_z_rms_mm_s_without": float(np.sqrt((y[rows, 2] ** 2).mean()) * 1e3),
        "residual_z_rms_mm_s_with": float(np.sqrt(((y[rows, 2] - pred[:, 2]) ** 2).mean()) * 1e3),
        "train_time_s": round(time.perf_counter() - t0, 1),
    }
    return summary
