"""Training data alignment (exact), checkpoints with optimizer state, resume, validation error."""

import numpy as np
import pytest
import torch

from robot_stack.data.dataset import DatasetError, EpisodeWriter
from robot_stack.policies.generative import ModelConfig
from robot_stack.policies.training import TrainSettings, _batch_images, actions_at, build_samples, train

MS = 1_000_000


def test_actions_at_interpolates_holds_and_keeps_last_sent():
    t = np.array([100, 200, 200, 300]) * MS
    poses = np.zeros((4, 7))
    poses[:, 6] = 1
    poses[:, 0] = [0.0, 0.5, 1.0, 2.0]  # the second row for 200 ms was sent last and wins
    a = actions_at(t, poses, np.array([1, 1, 0, 0.0]), np.array([50, 150, 200, 250, 400]) * MS)
    np.testing.assert_allclose(a[:, 0], [0.0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(a[:, 7], [1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(a[:, 3:7], np.tile([0, 0, 0, 1], (5, 1)))


def make_episode(root, n_frames=30, seed=0, task=None, smooth=False, depth=False, state_s=None, gripper=None):
    """Camera at 15 Hz, state at 250 Hz moving x = t (m, t in s), actions at 10 Hz leading by 0.1 s;
    ``task``: the episode's task string (metadata), if any; ``smooth``: camera frames are moving
    sinusoids (what a video codec keeps nearly intact) instead of noise; ``depth``: the camera also
    records depth (0.3-2.5 m); ``state_s``: the robot state stops after this long (s); ``gripper``:
    the commanded gripper per action (sequence, default all open)."""
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root)
    t0 = 10_000 * MS
    for i in range(int((n_frames / 15 if state_s is None else state_s) * 250)):
        t = t0 + i * 4 * MS
        x = (t - t0) / 1e9
        w.add(
            "robot_state",
            t,
            q=np.zeros(7),
            dq=np.zeros(7),
            ee_pose=np.r_[x, 0, 0.3, 1, 0, 0, 0],
            gripper_width=np.float64(0.08),
        )
    for k in range(n_frames):
        if smooth:
            yy, xx = np.mgrid[0:48, 0:64]
            color = np.stack([127 + 100 * np.sin(xx / (6 + c) + yy / (9 - c) + k / 5 + seed) for c in range(3)], -1)
            color = color.astype(np.uint8)
        else:
            color = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        extra = {"depth": rng.integers(300, 2500, (48, 64)).astype(np.uint16)} if depth else {}
        w.add("camera/wrist", t0 + k * 66_666_667, frame_index=np.int64(k), color=color, **extra)
    for k in range(n_frames * 10 // 15):
        t = t0 + k * 100 * MS
        w.add(
            "action",
            t,
            target_ns=np.int64(t + 100 * MS),
            pose=np.r_[(t - t0) / 1e9 + 0.1, 0, 0.3, 1, 0, 0, 0],
            gripper=np.float64(1.0 if gripper is None else gripper[k]),
            origin=np.int8(1),
        )
    return w.close({"task": task} if task is not None else None)


def test_samples_are_aligned_like_the_controller_window(tmp_path):
    path = make_episode(tmp_path)
    ms = ModelConfig(image_hw=(64, 64), obs_horizon=2, horizon=8, cameras={"wrist": "rgb"})
    s = build_samples([path], ms)
    # frames 0 and 1 have a window time before the first robot state; the other 28 are anchors
    assert len(s.state) == 28 and s.frames.shape == (30, 64, 64, 3)
    k = 9  # anchor = frame 11 at 11 * 66.67 ms; window times t_obs - 0.1 s, t_obs
    t_obs = 11 * 0.066666667
    np.testing.assert_allclose(s.state[k, :, 0], [t_obs - 0.1, t_obs], atol=1e-5)
    assert list(s.frame_idx[k]) == [10, 11]  # nearest frames to t_obs - 0.1 s (by 1 ns) and t_obs
    np.testing.assert_allclose(s.actions[k, :, 0], t_obs + np.arange(8) * 0.1, atol=1e-5)  # x_cmd(t) = t
    np.testing.assert_allclose(s.state[k, :, 7], 0.08)


def test_missed_grasp_attempts_are_left_out_and_their_recovery_kept(tmp_path):
    """A pick demonstration that closed on nothing, reopened and grasped again: with
    skip_missed_grasps the samples observed up to the missed close are left out (their actions aim
    beside the object), those after it (the recovery) and every sample of a one-grasp episode stay."""
    from robot_stack.policies.training import missed_grasp_spans

    t0 = 10_000 * MS
    # actions every 100 ms, target 100 ms later: close (target 500 ms), reopen (900), close (1300), open (1700)
    g = np.ones(20)
    g[4:8], g[12:16] = 0, 0
    path = make_episode(tmp_path / "missed", gripper=g)
    from robot_stack.data.dataset import open_episode

    a = open_episode(path).load("action")
    spans = missed_grasp_spans(a["target_ns"], a["gripper"])
    assert [hi for _, hi in spans] == [t0 + 500 * MS] and spans[0][0] < t0
    ms = ModelConfig(image_hw=(64, 64), obs_horizon=2, horizon=8, cameras={"wrist": "rgb"})
    full, kept = build_samples([path], ms), build_samples([path], ms, skip_missed_grasps=True)
    assert set(kept.t_obs.tolist()) == {t for t in full.t_obs.tolist() if t > t0 + 500 * MS}
    assert 0 < len(kept.t_obs) < len(full.t_obs) and len(full.t_obs) - len(kept.t_obs) == 6  # frames 2..7 (133-467 ms)
    assert kept.left_out == (6, 1) and full.left_out == (0, 0)
    # a second missed attempt starts at the reopen after the first: the recovery between them stays
    assert missed_grasp_spans(np.arange(10) * 100, np.array([1, 0, 0, 1, 1, 0, 1, 1, 0, 1])) == [
        (np.iinfo(np.int64).min, 100),
        (300, 500),
    ]
    g1 = np.ones(20)
    g1[4:12] = 0  # one grasp, released at the target
    one = make_episode(tmp_path / "one", gripper=g1)
    assert len(build_samples([one], ms, skip_missed_grasps=True).t_obs) == len(build_samples([one], ms).t_obs)
    assert TrainSettings(skip_missed_grasps=True).skip_missed_grasps


def test_frames_after_the_last_robot_state_are_no_anchors(tmp_path):
    """The recorder stops its streams one by one: a camera frame stamped after the last robot
    state (one demo run: 112 ms after it) is not an anchor (its state would be extrapolated);
    before, it stopped the whole training."""
    path = make_episode(tmp_path, n_frames=30, state_s=1.8)  # frames until 1.93 s
    from robot_stack.data.dataset import open_episode

    rs_last = open_episode(path).load("robot_state")["stamp_ns"][-1]
    cam = open_episode(path).load("camera/wrist")["stamp_ns"]
    late = int(np.sum(cam > rs_last))
    assert late == 3
    s = build_samples([path], ModelConfig(image_hw=(64, 64), obs_horizon=2, horizon=8, cameras={"wrist": "rgb"}))
    assert len(s.state) == 30 - 2 - late and s.t_obs.max() <= rs_last


def test_batch_images_shift_and_missing_camera(tmp_path):
    path = make_episode(tmp_path)
    s = build_samples([path], ModelConfig(image_hw=(64, 64), horizon=8))
    x = _batch_images(s, np.array([0, 1]), "rgb", 0, None)
    assert x.shape == (2, 2, 3, 64, 64) and float(x.max()) <= 1.0
    torch.testing.assert_close(x[0, 1], torch.from_numpy(s.frames[s.frame_idx[0, 1]] / 255.0).float().permute(2, 0, 1))
    y = _batch_images(s, np.array([0, 1]), "rgb", 4, np.random.default_rng(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    with pytest.raises(DatasetError, match="no camera/scene"):
        build_samples([path], ModelConfig(cameras={"scene": "rgb"}))


def test_train_checkpoints_resumes_and_validates(tmp_path):
    eps = [make_episode(tmp_path / "data", seed=i) for i in range(3)]
    settings = TrainSettings(
        model=ModelConfig(image_hw=(64, 64), horizon=8, enc_base=4, widths=(16, 32)),
        steps=12,
        batch_size=8,
        checkpoint_every=6,
        val_fraction=0.34,
        warmup_steps=2,
    )
    out = tmp_path / "p.safetensors"
    summary = train(settings, eps, out, progress=False)
    assert out.exists() and out.with_suffix(".opt.safetensors").exists()
    assert summary["val_episodes"] and summary["val_samples"] > 0 and np.isfinite(summary["val_pos_err_mm"])
    from robot_stack.policies.generative import load_checkpoint

    model, extra = load_checkpoint(out)
    assert extra["step"] == 12 and extra["settings"]["steps"] == 12
    assert model.a_min[0] < 0.1 < 2.0 < model.a_max[0]  # action range covers x in [0.1, 2.1] m
    more = settings.model_copy(update={"steps": 15})
    train(more, eps, out, resume=True, progress=False)
    _, extra = load_checkpoint(out)
    assert extra["step"] == 15


def test_train_a_layered_meanflow_policy_from_episodes(tmp_path):
    """H3DP's layered input and MeanFlow with the dispersive loss, from recorded RGB-D episodes to a
    served checkpoint: the training images are layered as the model layers them at deploy time."""
    from robot_stack.policies.generative import GenerativePolicy, TorchDenoiser, load_checkpoint
    from robot_stack.policies.training import _batch_images, build_samples

    eps = [make_episode(tmp_path / "data", seed=i, depth=True) for i in range(3)]
    ms = ModelConfig(
        kind="meanflow",
        cameras={"wrist": "layered"},
        image_hw=(64, 64),
        horizon=8,
        enc_base=4,
        widths=(16, 32),
        depth_layers=(0.0, 1.0, 3.0),
        scales=2,
        dispersive_weight=0.05,
    )
    settings = TrainSettings(model=ms, steps=6, batch_size=4, val_fraction=0.34, warmup_steps=1, checkpoint_every=100)
    summary = train(settings, eps, tmp_path / "p.safetensors", progress=False)
    assert np.isfinite(summary["final_loss"]) and np.isfinite(summary["val_pos_err_mm"])
    model, _ = load_checkpoint(tmp_path / "p.safetensors")
    assert model.cfg.cameras == {"wrist": "layered"} and model.cfg.depth_layers == (0.0, 1.0, 3.0)
    # the training batch equals what the model builds from the same frames at deploy time
    s = build_samples(eps[:1], ms)
    train_img = _batch_images(s, np.array([3]), "layered", 0, None, depth_edges=(0.0, 1.0, 3.0))[0]
    fr = s.frames[s.frame_idx[3]]
    obs = {"wrist.color": fr[..., :3], "wrist.depth": fr[..., -2:].copy().view(np.uint16)[..., 0], "state": s.state[3]}
    torch.testing.assert_close(train_img, model.images(obs)[0][0])
    a = GenerativePolicy(model, TorchDenoiser(model, "cpu"), seed=0).predict(obs)
    assert a.shape == (8, 8) and np.isfinite(a).all()


def test_two_arm_episodes_train_a_two_arm_policy(tmp_path):
    """Episodes of two arms (robot_state/<arm>, action/<arm>): the samples concatenate the arms in
    recorded order (left x = t, right y = -t), the model has 16 state and 16 action values, its spec
    says so, and a relative action frame takes every arm from its own TCP."""
    from robot_stack.policies.generative import GenerativePolicy, TorchDenoiser, load_checkpoint
    from robot_stack.policies.training import build_samples
    from test_lerobot import make_bimanual_episode

    eps = [make_bimanual_episode(tmp_path / "data", seed=i) for i in range(3)]
    ms = ModelConfig(
        cameras={"top": "rgb"}, image_hw=(64, 64), horizon=8, enc_base=4, widths=(16, 32), action_frame="relative"
    )
    s = build_samples(eps[:1], ms)
    assert s.state.shape[1:] == (2, 16) and s.actions.shape[1:] == (8, 16)
    k = 9
    t_obs = (s.t_obs[k] - s.t_obs[0]) / 1e9 + s.state[0, -1, 0]
    np.testing.assert_allclose(s.state[k, -1, [0, 9]], [t_obs, -t_obs], atol=1e-5)
    np.testing.assert_allclose(s.actions[k, :, 0], t_obs + np.arange(8) * 0.1, atol=1e-5)
    np.testing.assert_allclose(s.actions[k, :, 9], -(t_obs + np.arange(8) * 0.1), atol=1e-5)
    settings = TrainSettings(model=ms, steps=6, batch_size=4, val_fraction=0.34, warmup_steps=1, checkpoint_every=100)
    summary = train(settings, eps, tmp_path / "p.safetensors", progress=False)
    assert np.isfinite(summary["final_loss"])
    model, _ = load_checkpoint(tmp_path / "p.safetensors")
    assert model.cfg.proprio_dim == 16 and model.cfg.action_dim == 16
    rel = model.to_model_frame(s.actions[k : k + 1], s.state[k : k + 1])
    np.testing.assert_allclose(rel[0, :, [0, 9]].T, np.c_[np.arange(8) * 0.1, -np.arange(8) * 0.1], atol=1e-5)
    pol = GenerativePolicy(model, TorchDenoiser(model, "cpu"), seed=0)
    assert pol.metadata.action_dim == 16 and pol.metadata.obs_shapes["state"] == ((16,), "<f4")
    fr = s.frames[s.frame_idx[k]]
    assert pol.predict({"top.color": fr, "state": s.state[k]}).shape == (8, 16)
    one = make_episode(tmp_path / "one", seed=5)
    with pytest.raises(Exception, match="one model, one layout"):
        build_samples([eps[0], one], ModelConfig(cameras={"top": "rgb"}, image_hw=(64, 64), horizon=8))


def test_saved_weights_are_diffusion_policys_ema_of_the_trained_ones():
    """The EMA follows Diffusion Policy's schedule: the first update copies, then each step k moves
    the average by (1 - decay_k) toward the weights, decay_k = min(max, 1 - (1 + k)^-0.75)."""
    import torch

    from robot_stack.policies.training import TrainSettings, _ema

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = _ema(net, TrainSettings(ema_max_decay=0.5), step0=0)
    ref = None
    for k in range(6):
        with torch.no_grad():
            net.weight.add_(torch.randn_like(net.weight))
        ema.update_parameters(net)
        w = net.weight.detach().clone()
        if ref is None:
            ref = w
        else:
            decay = min(0.5, 1 - (1 + (k - 1)) ** -0.75)
            ref = ref + (w - ref) * (1 - decay)
        torch.testing.assert_close(ema.module.weight, ref)
    assert not torch.allclose(ema.module.weight, net.weight)  # it averages, it does not copy
    assert _ema(net, TrainSettings(ema_max_decay=0.0), 0) is None
