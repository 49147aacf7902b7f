"""Training a visuomotor policy on native episodes (``robot-stack train``).

Samples are built the way the controller builds observations at deploy time
(``robot_stack.control.observation.assemble``): every frame of the policy's camera is an anchor t_obs; the
window times are t_obs - k dt (k < To), the camera frame nearest each window time is taken (within
dt/2) and the robot state is interpolated at the window times (linear, slerp). The action chunk is
the executed action stream (the waypoints sent to the arm, each at its target time) interpolated at
t_obs + i dt, i < H, holding the first/last action outside the recorded span. Images are resized
with ``robot_stack.control.observation.resize_images`` (the controller's) so training and deployment see the same pixels.

Training: AdamW with cosine decay, random-shift augmentation (Diffusion Policy), an exponential
moving average of the weights as the saved model (Diffusion Policy's EMA: decay
1 - (1 + step)^-0.75 up to ``ema_max_decay``; torch's ``AveragedModel``), a rich progress
bar, periodic checkpoints (weights, normalization, settings and the optimizer state, all in
safetensors: no pickle) from which a run resumes. Validation holds out whole episodes and reports
the position error (mm) of sampled chunks against the recorded actions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from robot_stack.control.features import actions_at  # noqa: F401  (the executed action stream; used here and re-exported)
from .generative import (
    GenerativePolicy,
    GenerativePolicyModel,
    ModelConfig,
    TorchDenoiser,
    load_checkpoint,
    prefix_conditioned,
    save_checkpoint,
)

log = logging.getLogger(__name__)


class TrainSettings(BaseModel):
    """``robot-stack train`` settings (YAML): ``model:`` and the training keys below."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = Field(default_factory=ModelConfig)
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(100, ge=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    checkpoint_every: int = Field(500, ge=1)
    shift_px: int = Field(4, ge=0, description="random-shift augmentation, pixels")
    skip_missed_grasps: bool = Field(
        False,
        description="leave out the samples of grasp attempts that were undone "
        "(approach and descent up to a close that a later close repeats; "
        "missed_grasp_spans): the recovery after them stays",
    )
    ema_max_decay: float = Field(
        0.9999,
        ge=0,
        lt=1,
        description="the saved weights are an EMA of the trained ones "
        "(Diffusion Policy: decay 1 - (1 + step)^-ema_power, at most this); 0: off",
    )
    ema_power: float = Field(0.75, gt=0, description="EMA warm-up power (Diffusion Policy's 0.75)")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda")
    threads: int | None = Field(None, description="torch CPU threads (default: torch's)")


@dataclass
class Samples:
    """Training samples.

    Attributes:
        frames: (F, h, w, C) uint8 resized camera images of all episodes, or for a "points"
            camera (F, N, 3) float32 point clouds in the base frame (features.PointCloudSpec).
        frame_idx: (N, To) int64 rows of ``frames`` per sample.
        state: (N, To, 8 A) float32 [ee_pose(7) gripper_width] per arm (A arms, recorded order) at
            the window times.
        actions: (N, H, 8 A) float32 [ee_pose(7) gripper] per arm at t_obs + i dt.
        episode: (N,) int64 episode number of each sample.
        t_obs: (N,) int64 anchor time of each sample (its newest frame's stamp), ns.
        left_out: anchors left out as missed grasp attempts (``skip_missed_grasps``), and the
            episodes they came from.
        arms: the recorded arm nodes in action order ([""]: one arm).
    """

    frames: np.ndarray
    frame_idx: np.ndarray
    state: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    t_obs: np.ndarray | None = None
    left_out: tuple[int, int] = (0, 0)
    arms: tuple[str, ...] = ("",)

    def subset(self, mask: np.ndarray) -> Samples:
        return Samples(
            self.frames,
            self.frame_idx[mask],
            self.state[mask],
            self.actions[mask],
            self.episode[mask],
            None if self.t_obs is None else self.t_obs[mask],
            arms=self.arms,
        )


def missed_grasp_spans(target_ns: np.ndarray, gripper: np.ndarray) -> list[tuple[int, int]]:
    """The missed grasp attempts of one arm's recorded action stream: (start_ns, close_ns) per
    attempt whose close a later close repeats (the gripper reopened and grasped again).

    ``target_ns`` (T,) int64 ns and ``gripper`` (T,) the commanded gripper (1 open, 0 closed, as
    teleop commands it), in any order. An attempt starts at the episode's start or at the reopen
    after the previous missed close, and ends at its own close: the approach and descent that led
    to it. What follows a missed close (lifting nothing, opening, going again) is the recovery and
    is not in a span. An episode with one close (or none) has no missed attempt.

    Why: recovery demonstrations made by aiming a grasp beside the object on purpose (our pick
    expert's ``miss_rate``) would otherwise teach the policy to aim beside it too; DART (Laskey et
    al. 2017, arXiv 1703.09327) likewise keeps the states a perturbation leads to but labels them
    with the expert's intended action, not the perturbed one.
    """
    o = np.argsort(np.asarray(target_ns), kind="stable")
    t, closed = np.asarray(target_ns, np.int64)[o], np.asarray(gripper, float)[o] < 0.5
    closes = t[1:][closed[1:] & ~closed[:-1]]
    if len(closed) and closed[0]:
        closes = np.r_[t[0], closes]
    opens = t[1:][~closed[1:] & closed[:-1]]
    spans, start = [], np.iinfo(np.int64).min
    for c in closes[:-1]:
        spans.append((int(start), int(c)))
        later = opens[opens > c]
        start = int(later[0]) if len(later) else int(c)
    return spans


def build_samples(paths: list[Path], ms: ModelConfig, skip_missed_grasps: bool = False) -> Samples:
    """Samples from finished episodes (see the module docstring). ``skip_missed_grasps``: leave out
    the samples whose observation time lies in a missed grasp attempt of any arm
    (:func:`missed_grasp_spans`).

    Raises:
        DatasetError: an episode lacks the camera, robot state or action stream.
    """
    from robot_stack.data.dataset import DatasetError, episode_arms, open_episode
    from robot_stack.control.features import camera_images, state_vector
    from robot_stack.control.observation import interpolate_states

    frames, fidx, states, acts, eps, anchors = [], [], [], [], [], []
    left_out, left_eps = 0, 0
    arms0 = None
    base = 0
    dt_ns = int(round(ms.dt * 1e9))
    for e_i, path in enumerate(paths):
        ep = open_episode(path)
        arms = episode_arms(ep)  # [""]: one arm; else the arm nodes in recorded (action) order
        if arms0 is not None and arms != arms0:
            raise DatasetError(f"{path}: arms {arms}, the first episode's {arms0}: one model, one layout")
        arms0 = arms
        sfx = [f"/{x}" if x else "" for x in arms]
        for x in sfx:
            if f"action{x}" not in ep.streams() or f"robot_state{x}" not in ep.streams():
                raise DatasetError(f"{path}: no action{x} or robot_state{x} stream (has {ep.streams()})")
        cam = f"camera/{ms.camera}"
        if cam not in ep.streams():
            raise DatasetError(f"{path}: no {cam} stream (has {ep.streams()})")
        c = ep.load(cam)
        per_arm = [(ep.load(f"robot_state{x}"), ep.load(f"action{x}")) for x in sfx]
        rs, a = per_arm[0]
        if any(len(a_["target_ns"]) == 0 for _, a_ in per_arm):
            raise DatasetError(f"{path}: no executed actions recorded")
        imgs = []
        if ms.mode == "points":
            frames.append(_episode_clouds(ep, ms, c))
        if ms.mode in ("rgb", "rgbd", "layered"):
            imgs.append(camera_images(c["color"], ms.image_hw))
        if ms.mode in ("depth", "rgbd", "layered"):
            imgs.append(
                camera_images(c["depth"], ms.image_hw)[..., None]
                .view(np.uint8)
                .reshape(*c["depth"].shape[:1], *ms.image_hw, 2)
            )
        if imgs:
            frames.append(np.concatenate(imgs, axis=-1))
        st = c["stamp_ns"]
        win = np.arange(ms.obs_horizon)[::-1] * dt_ns
        skip = (
            [sp for _, a_ in per_arm for sp in missed_grasp_spans(a_["target_ns"], a_["gripper"])]
            if skip_missed_grasps
            else []
        )
        left_eps += bool(skip)
        for t_obs in st:
            times = t_obs - win
            if any(times[0] < r["stamp_ns"][0] or times[-1] > r["stamp_ns"][-1] for r, _ in per_arm):
                continue  # the window starts before the robot state does, or ends after it stopped
            j = np.abs(st[None, :] - times[:, None]).argmin(1)
            if np.any(np.abs(st[j] - times) > dt_ns // 2):
                continue
            if any(lo <= t_obs <= hi for lo, hi in skip):
                left_out += 1
                continue  # a missed grasp attempt: not an action to imitate
            sv, av = [], []
            for r, a_ in per_arm:
                _, ee, g = interpolate_states(
                    r["stamp_ns"], r["q"], r["ee_pose"], r["gripper_width"], times, max_extrapolation_ns=dt_ns
                )
                sv.append(state_vector(ee, g))
                av.append(actions_at(a_["target_ns"], a_["pose"], a_["gripper"], t_obs + np.arange(ms.horizon) * dt_ns))
            fidx.append(base + j)
            states.append(np.concatenate(sv, axis=1))
            acts.append(np.concatenate(av, axis=1))
            eps.append(e_i)
            anchors.append(int(t_obs))
        base += len(st)
    if not fidx:
        raise DatasetError("no training samples: episodes too short or camera stamps too sparse")
    return Samples(
        np.concatenate(frames),
        np.array(fidx),
        np.array(states, np.float32),
        np.array(acts, np.float32),
        np.array(eps),
        np.array(anchors, np.int64),
        (left_out, left_eps),
        tuple(arms0),
    )


def point_spec(ms: ModelConfig):
    """The :class:`~robot_stack.control.features.PointCloudSpec` of a points-mode model."""
    from robot_stack.control.features import PointCloudSpec

    return PointCloudSpec(tuple(ms.points_lo), tuple(ms.points_hi), ms.n_points)


def _episode_clouds(ep, ms: ModelConfig, cam: dict) -> np.ndarray:
    """(F, N, 3) float32 clouds of every frame of the episode's ``ms.camera``, built as the
    controller builds them at deploy time: the frame's K and depth scale as recorded, the
    camera's ``T_base_camera`` from the calibration file recorded with the episode.

    Raises:
        DatasetError: no depth, or no extrinsics for the camera in the episode's calibration.
    """
    import yaml

    from robot_stack.data.dataset import DatasetError

    if "depth" not in cam:
        raise DatasetError(f"{ep.path}: camera {ms.camera} has no depth (points mode needs it)")
    meta = (ep.meta.get("cameras") or {}).get(ms.camera) or {}
    calib = yaml.safe_load(ep.meta.get("calibration") or "") or {}
    T = ((calib.get("cameras") or {}).get(ms.camera) or {}).get("T_base_camera")
    if T is None or "K" not in meta:
        raise DatasetError(
            f"{ep.path}: no T_base_camera for camera {ms.camera} in the episode's calibration "
            "(record with the setup's calibration file: eye-to-hand hand-eye calibration)"
        )
    return point_spec(ms).clouds(cam["depth"], np.asarray(meta["K"]), float(meta["depth_scale"]), np.asarray(T))


def _batch_images(
    s: Samples,
    rows: np.ndarray,
    mode: str,
    shift: int,
    rng: np.random.Generator | None,
    shifts: np.ndarray | None = None,
    depth_edges: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """(B, To, C, h, w) float in [0, 1] (depth: m / 2, as the model's ``images``), random-shifted
    (per row (dy, dx) in [0, 2 shift]: ``shifts`` (B, 2) when given, else drawn from ``rng``)."""
    x = s.frames[s.frame_idx[rows]]  # (B, To, h, w, C); points: (B, To, N, 3)
    if mode == "points":
        return torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if mode == "layered":  # H3DP's depth layers, as the model builds them at deploy time
        from .generative import depth_layers

        b, to, h, w = x.shape[:4]
        d = x[..., -2:].copy().view(np.uint16)[..., 0]
        t = (
            depth_layers(
                x[..., :3].reshape(b * to, h, w, 3), d.reshape(b * to, h, w), depth_edges or (0.0, 0.6, 1.2, 10.0)
            )
            .reshape(b, to, -1, h, w)
            .permute(0, 1, 3, 4, 2)
        )
    elif mode == "rgb":
        t = torch.from_numpy(x.astype(np.float32) / 255.0)
    else:
        d = x[..., -2:].copy().view(np.uint16)[..., 0].astype(np.float32) / 2000.0
        parts = ([x[..., :3].astype(np.float32) / 255.0] if mode == "rgbd" else []) + [np.clip(d, 0, 1)[..., None]]
        t = torch.from_numpy(np.concatenate(parts, -1))
    t = t.permute(0, 1, 4, 2, 3)
    if shift and (rng is not None or shifts is not None):
        b, to, c, h, w = t.shape
        pad = torch.nn.functional.pad(t.reshape(b, to * c, h, w), (shift,) * 4, mode="replicate")
        out = torch.empty_like(t.reshape(b, to * c, h, w))
        for i, (dy, dx) in enumerate(shifts if shifts is not None else rng.integers(0, 2 * shift + 1, (b, 2))):
            out[i] = pad[i, :, dy : dy + h, dx : dx + w]
        t = out.reshape(b, to, c, h, w)
    return t


def _opt_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        for k, v in opt.state.get(p, {}).items():
            out[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = opt.param_groups[0]["params"]
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        opt.state[params[int(i)]][k] = v


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    frac = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def validate(model: GenerativePolicyModel, s: Samples, mode: str, n: int = 128, seed: int = 0) -> dict[str, float]:
    """Position error (mm) of sampled chunks vs the recorded actions on up to ``n`` samples:
    mean over the whole chunk and over its first 8 actions (what sync execution runs)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(s.state), size=min(n, len(s.state)), replace=False)
    policy = GenerativePolicy(model, TorchDenoiser(model, device="cpu"), seed=seed)
    errs, errs8 = [], []
    imgs = _batch_images(s, rows, mode, 0, None, depth_edges=model.cfg.depth_layers)
    for b, r in enumerate(rows):
        denoise = policy.backend.bind([imgs[b : b + 1]], s.state[r][None])
        if model.cfg.rtc_max_prefix:  # trained for prefixes: validated without one (d = 0)
            c = model.cfg
            denoise = prefix_conditioned(
                denoise, np.zeros((1, c.horizon, c.action_dim), np.float32), np.zeros(1, int), c.horizon
            )
        noise = policy.rng.standard_normal((1, model.cfg.horizon, model.cfg.action_dim)).astype(np.float32)
        x = model.sampler.sample(denoise, noise, model.cfg.sample_steps)
        pred = model.to_world(model.denormalize(x[0]), s.state[r])
        e = np.linalg.norm(pred[:, :3] - s.actions[r, :, :3], axis=1) * 1e3
        errs.append(e.mean())
        errs8.append(e[:8].mean())
    return {
        "val_pos_err_mm": float(np.mean(errs)),
        "val_pos_err_first8_mm": float(np.mean(errs8)),
        "val_samples": len(rows),
    }


def _ema(model: torch.nn.Module, settings: TrainSettings, step0: int):
    """The EMA of ``model``'s parameters (``torch.optim.swa_utils.AveragedModel``), or None when
    ``ema_max_decay`` is 0. Decay at optimizer step k (counted from 0, ``step0`` on resume, which
    continues from the saved averaged weights): min(ema_max_decay, 1 - (1 + k)^-ema_power), so the
    first steps copy the weights and the average lengthens as training settles (Chi et al. 2023,
    Diffusion Policy, its EMAModel with inv_gamma 1). Buffers (the action normalization) are copied
    once: they do not change while training."""
    if settings.ema_max_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    def avg(avg_p: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        k = step0 + int(n) - 1  # n: updates so far, this one excluded after the first (a copy)
        decay = min(settings.ema_max_decay, 1.0 - (1.0 + k) ** -settings.ema_power)
        return avg_p + (p - avg_p) * (1.0 - decay)

    return AveragedModel(model, avg_fn=avg, use_buffers=False)


def train(
    settings: TrainSettings, episodes: list[Path], out: Path, resume: bool = False, console=None, progress: bool = True
) -> dict:
    """Train and write ``out`` (.safetensors, plus ``out``-step checkpoints); returns the summary.

    Raises:
        DatasetError: unusable episodes. ValueError: too few episodes for the validation split.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from robot_stack.policies import distributed as dd

    console = console or Console()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)  # the same on every rank: the global batches
    device = (
        "cuda"
        if settings.device == "auto" and torch.cuda.is_available()
        else ("cpu" if settings.device == "auto" else settings.device)
    )
    place = dd.setup(device)
    device = place.device
    if settings.batch_size % place.world:
        raise ValueError(f"batch_size {settings.batch_size} does not split over {place.world} ranks")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    elif place.world > 1 and not device.startswith("cuda"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.world))  # ranks share the cores
    if not place.main:
        console = Console(quiet=True)
        progress = False
    ms = settings.model
    t0 = time.perf_counter()
    samples = build_samples(episodes, ms, skip_missed_grasps=settings.skip_missed_grasps)
    n_ep = len(episodes)
    n_val = int(round(n_ep * settings.val_fraction)) if n_ep > 1 else 0
    val_eps = set(rng.choice(n_ep, size=n_val, replace=False).tolist()) if n_val else set()
    is_val = np.isin(samples.episode, list(val_eps))
    train_s, val_s = samples.subset(~is_val), samples.subset(is_val)
    console.print(
        f"{n_ep} episodes -> {len(train_s.state)} training / {len(val_s.state)} validation samples "
        f"({time.perf_counter() - t0:.1f} s to load); device {device}"
        + (f", {place.world} ranks (DDP)" if place.world > 1 else "")
    )
    if settings.skip_missed_grasps:
        console.print(
            f"left out {samples.left_out[0]} samples of missed grasp attempts "
            f"({samples.left_out[1]} of {n_ep} episodes had one)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step0 = 0
    if resume and out.exists():
        model, extra = load_checkpoint(out)
        step0 = int(extra.get("step", 0))
        console.print(f"resuming {out} at step {step0}")
    else:
        model = GenerativePolicyModel(ms.with_arms(list(samples.arms)))
        a = model.to_model_frame(train_s.actions, train_s.state)  # the frame it learns in
        a = a.reshape(-1, a.shape[-1])
        lo, hi = a.min(0), a.max(0)
        pad = np.maximum(0.05 * (hi - lo), 1e-3)  # margin so deploy-time actions near the edge stay in range
        model.a_min.copy_(torch.from_numpy(lo - pad))
        model.a_max.copy_(torch.from_numpy(hi + pad))
    model.to(device).train()
    net = dd.wrap(model, place)  # DDP over the ranks (syncs gradients), the plain loss on one
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if step0:
        from safetensors.torch import load_file

        ot = out.with_suffix(".opt.safetensors")
        if ot.exists():
            _load_opt(opt, {k: v.to(device) for k, v in load_file(str(ot)).items()})
    losses = []
    ema = _ema(model, settings, step0)
    saved = ema.module if ema is not None else model  # what checkpoints, validation and deployment get

    def save(path: Path, step: int, extra: dict | None = None) -> None:
        """Rank 0 writes (the unwrapped model: resumable on any world size); all ranks wait for it."""
        from safetensors.torch import save_file

        if place.main:
            import copy

            save_checkpoint(
                copy.deepcopy(saved).cpu(),
                path,
                {
                    "step": step,
                    "settings": settings.model_dump(mode="json"),
                    "world_size": place.world,
                    "episodes": [str(p) for p in episodes],
                    **(extra or {}),
                },
            )
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in _opt_tensors(opt).items()},
                str(path.with_suffix(".opt.safetensors")),
            )
        dd.barrier(place)

    cols = [
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    ]
    t_train = time.perf_counter()
    with Progress(*cols, console=console, disable=not progress) as bar:
        task = bar.add_task("train", total=settings.steps, completed=step0, loss=float("nan"))
        for step in range(step0, settings.steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, settings)
            rows = rng.integers(0, len(train_s.state), settings.batch_size)  # the global batch
            shifts = rng.integers(0, 2 * settings.shift_px + 1, (len(rows), 2)) if settings.shift_px else None
            mine = dd.shard(np.arange(len(rows)), place)  # this rank's slice of it
            rows = rows[mine]
            imgs = _batch_images(
                train_s,
                rows,
                ms.mode,
                settings.shift_px,
                None,
                None if shifts is None else shifts[mine],
                tuple(ms.depth_layers),
            ).to(device)
            loss = net(
                imgs,
                torch.from_numpy(train_s.state[rows]).to(device),
                torch.from_numpy(train_s.actions[rows]).to(device),
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(dd.mean_over_ranks(loss.item(), place))
            bar.update(task, advance=1, loss=float(np.mean(losses[-50:])))
            if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                save(out, step + 1)
    train_s_time = time.perf_counter() - t_train
    # every rank's weights, summarised: DDP keeps the replicas equal (a rank out of step shows here)
    rank_sums = dd.gather_float(float(sum(p.detach().double().abs().sum() for p in model.parameters())), place)
    saved.cpu().eval()
    summary = {
        "ema_max_decay": settings.ema_max_decay,
        "steps": settings.steps,
        "train_time_s": round(train_s_time, 1),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "train_samples": int(len(train_s.state)),
        "val_episodes": sorted(int(v) for v in val_eps),
        "world_size": place.world,
        "rank_param_abs_sums": rank_sums,
        "loss_curve": [float(x) for x in losses],
    }  # per step, the global batch's loss (mean over ranks)
    if len(val_s.state) and place.main:
        summary.update(validate(saved, val_s, ms.mode, seed=settings.seed))
    save(out, settings.steps, {"summary": {k: v for k, v in summary.items() if k != "loss_curve"}})
    if place.main:
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    dd.teardown(place)
    return summary
