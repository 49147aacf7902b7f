"""Diffusion / flow policies: shapes, learning signal, ONNX parity, RTC guidance (exact and Jacobian-free)."""

import numpy as np
import pytest
from robot_stack.testing.setups import node, setup, write_setup
import torch

from robot_stack.policies.generative import (
    GenerativePolicy,
    GenerativePolicyModel,
    ModelConfig,
    OnnxDenoiser,
    TorchDenoiser,
    export_onnx,
)

SMALL = dict(
    cameras={"scene": "rgbd"},
    image_hw=(64, 64),
    proprio_dim=4,
    obs_horizon=2,
    horizon=8,
    action_dim=3,
    enc_base=8,
    widths=(32, 64),
    sample_steps=4,
)


def obs(rng):
    return {
        "scene.color": rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8),
        "scene.depth": rng.integers(300, 1500, (2, 64, 64), dtype=np.uint16),
        "state": rng.standard_normal((2, 4)).astype(np.float32),
    }


@pytest.mark.parametrize("kind", ["ddim", "flow"])
def test_training_reduces_loss_on_a_learnable_task(kind):
    """Actions are a fixed function of the proprioceptive state: the loss must fall well below
    its starting value within a few dozen CPU steps."""
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**SMALL, kind=kind))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        proprio = torch.randn(16, 2, 4, generator=g)
        actions = torch.tanh(proprio[:, -1:, :3]).repeat(1, 8, 1) * 0.8
        images = [torch.rand(16, 2, 4, 64, 64, generator=g)]
        loss = m.loss(images, proprio, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"\n{kind}: loss {first:.3f} -> {last:.3f}")
    assert last < 0.6 * first


@pytest.mark.parametrize("kind,steps", [("ddim", 4), ("flow", 1), ("flow", 3)])
def test_onnx_matches_torch_for_the_same_noise(tmp_path, kind, steps):
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**{**SMALL, "sample_steps": steps}, kind=kind)).eval()
    path = export_onnx(m, tmp_path / "policy.onnx")
    rng = np.random.default_rng(0)
    o = obs(rng)
    noise = rng.standard_normal((1, 8, 3)).astype(np.float32)
    a_torch = GenerativePolicy(m, TorchDenoiser(m, "cpu")).predict(o, noise=noise)
    a_onnx = GenerativePolicy(m, OnnxDenoiser(path, ["CPUExecutionProvider"])).predict(o, noise=noise)
    assert a_torch.shape == (8, 3)
    # one denoiser evaluation agrees to float32 precision ...
    imgs, st = m.images(o), np.asarray(o["state"], np.float32)[None]
    t = np.array([0.7], np.float32)
    np.testing.assert_allclose(
        OnnxDenoiser(path, ["CPUExecutionProvider"]).bind(imgs, st)(noise, t),
        TorchDenoiser(m, "cpu").bind(imgs, st)(noise, t),
        atol=1e-4,
    )
    # ... and the whole chunk to 0.1 % of the normalized range (DDIM's 1/sqrt(alpha_bar) at the first,
    # noisiest step amplifies the last-bit differences)
    np.testing.assert_allclose(a_onnx, a_torch, atol=2e-3)
    other = GenerativePolicy(m, TorchDenoiser(m, "cpu")).predict(o, noise=noise + 1)
    assert np.abs(other - a_torch).max() > 1e-3  # the output depends on the noise: parity is not trivial


def test_rtc_weights_match_the_reference_formula():
    """Black et al. 2025, eq. 5, written as their reference code computes it (vectorized, clipped,
    with start = d and end = H - s): equal to ours on every valid (H, d, s), d <= s <= H - d."""
    from robot_stack.control.chunking import rtc_guidance_weights

    n = 0
    for H in (4, 8, 16, 32, 50):
        for s in range(H + 1):
            for d in range(0, min(s, H - s) + 1):
                end = H - s
                i = np.arange(H)
                w = np.clip((d - 1 - i) / (end - d + 1) + 1, 0, 1)
                w = w * np.expm1(w) / (np.e - 1)
                w = np.where(i >= end, 0.0, w)
                np.testing.assert_allclose(rtc_guidance_weights(H, d, s), w, atol=1e-12, err_msg=f"H={H} d={d} s={s}")
                n += 1
    assert n > 500


def _rtc_case(kind, steps):
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**{**SMALL, "sample_steps": steps}, kind=kind)).eval()
    rng = np.random.default_rng(1)
    o = obs(rng)
    noise = rng.standard_normal((1, 8, 3)).astype(np.float32)
    prev = rng.uniform(-0.5, 0.5, (6, 3)).astype(np.float32)  # the previous chunk over indices 0..5
    return m, o, noise, prev


@pytest.mark.parametrize("kind,steps", [("flow", 4), ("flow", 8)])
def test_rtc_guidance_pulls_the_overlap_toward_the_previous_chunk(kind, steps):
    """Exact (VJP) guidance: the guided chunk's actions after the frozen d = 2 move toward the
    previous chunk over the overlap (indices 2..5), compared with the unguided sample from the same
    noise; beyond the overlap (6, 7) nothing asks them to. Fails when the guidance is removed."""
    m, o, noise, prev = _rtc_case(kind, steps)
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"))
    free = pol.predict(o, noise=noise, guidance="none")
    guided = pol.predict(o, committed_prefix=prev, frozen=2, noise=noise, guidance="exact")
    err_free = np.linalg.norm(free[2:6] - prev[2:], axis=1)
    err_guided = np.linalg.norm(guided[2:6] - prev[2:], axis=1)
    print(f"\n{kind} x{steps}: overlap error unguided {err_free.round(3)}, guided {err_guided.round(3)}")
    assert err_guided.mean() < 0.5 * err_free.mean()
    assert np.all(err_guided[:2] < err_free[:2])  # the strongly weighted part of the soft mask
    assert (
        np.linalg.norm(guided[:2] - prev[:2], axis=1).mean() < 0.5 * np.linalg.norm(free[:2] - prev[:2], axis=1).mean()
    )
    assert pol.predict(o, committed_prefix=prev, frozen=2, noise=noise, guidance="none") == pytest.approx(free)


@pytest.mark.parametrize("kind,steps", [("flow", 4)])
def test_jacobian_free_guidance_against_the_exact_form(tmp_path, kind, steps):
    """ONNX Runtime exports no vector-Jacobian product, so its RTC is Jacobian-free (the clean
    estimate pulled toward the previous chunk). Measured against the exact form on the same noise:
    both pull the overlap toward the previous chunk, and they differ from each other by less than
    either differs from the unguided sample."""
    m, o, noise, prev = _rtc_case(kind, steps)
    torch_pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"))
    free = torch_pol.predict(o, noise=noise, guidance="none")
    exact = torch_pol.predict(o, committed_prefix=prev, frozen=2, noise=noise, guidance="exact")
    jf = torch_pol.predict(o, committed_prefix=prev, frozen=2, noise=noise, guidance="jacobian_free")
    onnx_pol = GenerativePolicy(m, OnnxDenoiser(export_onnx(m, tmp_path / "p.onnx"), ["CPUExecutionProvider"]))
    jf_onnx = onnx_pol.predict(o, committed_prefix=prev, frozen=2, noise=noise)  # auto: Jacobian-free on ORT
    np.testing.assert_allclose(jf_onnx, jf, atol=2e-3)
    with pytest.raises(ValueError, match="differentiable backend"):
        onnx_pol.predict(o, committed_prefix=prev, noise=noise, guidance="exact")
    ov = slice(0, 6)
    d_exact, d_jf = np.abs(exact[ov] - prev).mean(), np.abs(jf[ov] - prev).mean()
    d_free, d_between = np.abs(free[ov] - prev).mean(), np.abs(jf[ov] - exact[ov]).mean()
    print(
        f"\n{kind}: mean |chunk - previous| over the overlap: unguided {d_free:.3f}, exact {d_exact:.3f}, "
        f"Jacobian-free {d_jf:.3f}; |Jacobian-free - exact| {d_between:.3f}"
    )
    assert d_exact < 0.5 * d_free and d_jf < 0.5 * d_free
    assert d_between < min(np.abs(free[ov] - exact[ov]).mean(), np.abs(free[ov] - jf[ov]).mean())


def test_ddim_exact_guidance_with_an_exact_denoiser():
    """DDIM's exact guidance on the optimal denoiser of Gaussian data x0 ~ N(0, sigma^2 I)
    (eps*(x_t) = sqrt(1 - a) x_t / (a sigma^2 + 1 - a), differentiable in closed form): the guided
    overlap moves toward the previous chunk, the frozen part most, and without a prefix the
    guided and unguided samplers agree."""
    from robot_stack.control.chunking import rtc_guidance_weights
    from robot_stack.policies.samplers import DDIM

    sampler, sig2 = DDIM(100), 0.3**2

    def eps_of(x, t, xp=np):
        a = sampler.abar[np.clip(np.round(np.asarray(t, float) * 100).astype(int), 0, 99)][0]
        return (1 - a) ** 0.5 * x / (a * sig2 + 1 - a)

    denoise = lambda x, t: eps_of(x, t).astype(np.float32)  # noqa: E731
    denoise.torch = lambda x, t: eps_of(x, t.numpy())  # torch in, torch out (a scalar factor) # noqa: E731
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, 16, 2)).astype(np.float32)
    prev = np.full((10, 2), 0.5, np.float32)  # previous chunk over indices 0..9
    w = rtc_guidance_weights(16, 3, 6)
    free = sampler.sample(denoise, noise, 8)
    guided = sampler.sample(denoise, noise, 8, prefix=prev, weights=w)
    jf = sampler.sample(lambda x, t: denoise(x, t), noise, 8, prefix=prev, weights=w)
    err = lambda a: np.abs(a[0, :10] - 0.5).mean(axis=1)  # noqa: E731
    print(
        f"\nddim: overlap error unguided {err(free).round(3)}, exact {err(guided).round(3)}, "
        f"Jacobian-free {err(jf).round(3)}"
    )
    assert np.all(err(guided)[:3] < 0.5 * err(free)[:3])  # frozen: pulled close
    assert err(guided)[3:10].mean() < err(free)[3:10].mean()  # the decaying rest of the overlap: pulled
    np.testing.assert_allclose(guided[0, 12:], free[0, 12:], atol=0.05)  # no weight past the overlap
    np.testing.assert_allclose(sampler.sample(denoise, noise, 8, prefix=None), free)


def test_checkpoint_round_trip_without_pickle(tmp_path):
    from robot_stack.policies.generative import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**SMALL, kind="flow")).eval()
    m.a_min.fill_(-2.0)
    path = save_checkpoint(m, tmp_path / "p.safetensors", extra={"step": 7})
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a torch/pickle zip
    m2, extra = load_checkpoint(path)
    assert extra == {"step": 7} and m2.cfg == m.cfg and float(m2.a_min[0]) == -2.0
    rng = np.random.default_rng(0)
    o = obs(rng)
    noise = rng.standard_normal((1, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        GenerativePolicy(m, TorchDenoiser(m, "cpu")).predict(o, noise=noise),
        GenerativePolicy(m2, TorchDenoiser(m2, "cpu")).predict(o, noise=noise),
    )
    bad = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="not a robot_stack policy checkpoint"):
        load_checkpoint(bad)


def test_policy_node_serves_onnx_export_and_rejects_bad_windows(tmp_path, run_dir):
    """The policy node in its own process serves an ONNX export; malformed windows get error replies."""
    from robot_stack.runtime.config import load_config
    from robot_stack.policies.generative import save_checkpoint
    from robot_stack.comm.transport import RequestClient

    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**{**SMALL, "sample_steps": 2}, kind="flow")).eval()
    save_checkpoint(m, tmp_path / "pol.safetensors")
    export_onnx(m, tmp_path / "pol.onnx")
    cfg_path = tmp_path / "stack.yaml"
    write_setup(
        cfg_path,
        setup(
            "pol",
            run_dir,
            policy=node("policy", backend={"type": "onnx", "path": str(tmp_path / "pol.onnx"), "seed": 0}),
        ),
    )

    from conftest import launched

    with launched(cfg_path):
        client = RequestClient(load_config(cfg_path).in_endpoint("policy", run_dir), "test", timeout_s=30)
        try:
            _check_policy_replies(client)
        finally:
            client.close()


def _check_policy_replies(client):
    from robot_stack.comm.messages import ObservationWindow
    from robot_stack.comm.transport import RemoteError

    rng = np.random.default_rng(0)
    o = obs(rng)
    reply = client.request("infer", ObservationWindow(request_id=1, obs=o, obs_age_ns=np.zeros(2, np.int64)))
    assert reply.actions.shape == (8, 3) and reply.request_id == 1 and reply.inference_ns > 0
    bad = dict(o)
    bad["state"] = bad["state"][:, :2]
    with pytest.raises(RemoteError, match="bad_observation: state: shape"):
        client.request("infer", ObservationWindow(request_id=2, obs=bad, obs_age_ns=np.zeros(2, np.int64)))
    with pytest.raises(RemoteError, match="stale"):
        client.request("infer", ObservationWindow(request_id=3, obs=o, obs_age_ns=np.full(2, 5 * 10**9)))
    # still serving after the bad requests
    assert (
        client.request("infer", ObservationWindow(request_id=4, obs=o, obs_age_ns=np.zeros(2, np.int64))).request_id
        == 4
    )


def test_export_onnx_cli(tmp_path):
    from robot_stack.cli import main
    from robot_stack.policies.generative import save_checkpoint

    m = GenerativePolicyModel(ModelConfig(**SMALL, kind="ddim")).eval()
    save_checkpoint(m, tmp_path / "p.safetensors")
    assert main(["export-onnx", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "out" / "q.onnx")]) == 0
    assert (tmp_path / "out" / "q.encoder.onnx").is_file() and (tmp_path / "out" / "q.denoiser.onnx").is_file()
    assert (tmp_path / "out" / "q.safetensors").is_file()  # the config travels with the export
    OnnxDenoiser(tmp_path / "out" / "q.onnx", ["CPUExecutionProvider"])


@pytest.mark.slow  # trains a model
def test_training_time_rtc_learns_to_continue_a_prefix():
    """Training-time RTC (arXiv 2512.05964): actions a_i = c + 0.1 i with an offset c that no
    observation reveals, so only the prefix tells it. After training with random prefixes of
    d <= 3 (loss on the rest only), a flow model continues a given prefix; without one it cannot
    know c. The same model with the prefix ignored is the control."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SMALL, "cameras": {"scene": "rgb"}, "sample_steps": 4, "rtc_max_prefix": 3}, kind="flow")
    m = GenerativePolicyModel(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n):
        c = torch.rand(n, 1, 3, generator=g) * 1.2 - 0.6
        return c + 0.05 * torch.arange(8.0)[None, :, None]

    for _ in range(400):  # (about 30 s on 2 CPU cores)
        loss = m.loss([torch.zeros(32, 2, 3, 64, 64)], torch.zeros(32, 2, 4), batch(32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0)
    o = {"scene.color": np.zeros((2, 64, 64, 3), np.uint8), "state": np.zeros((2, 4), np.float32)}
    errs_pre, errs_free = [], []
    for c in (-0.5, -0.2, 0.1, 0.4):
        truth = (c + 0.05 * np.arange(8.0))[:, None].repeat(3, axis=1).astype(np.float32)
        a = pol.predict(o, committed_prefix=truth[:6], frozen=2)
        assert pol.last_frozen == 2
        np.testing.assert_allclose(a[:2], truth[:2], atol=1e-6)  # the frozen prefix is kept
        errs_pre.append(np.abs(a[2:] - truth[2:]).mean())
        errs_free.append(
            np.abs(pol.predict(o, committed_prefix=truth[:6], frozen=2, guidance="none")[2:] - truth[2:]).mean()
        )
    print(f"\ncontinuation error with the prefix {np.mean(errs_pre):.3f}, without {np.mean(errs_free):.3f}")
    assert np.mean(errs_pre) < 0.35 * np.mean(errs_free)
    assert pol.predict(o, committed_prefix=truth[:6], frozen=5) is not None and pol.last_frozen == 3  # capped at d_max


@pytest.mark.parametrize("frame", ["relative", "relative_xy", "absolute"])
def test_relative_action_frame_follows_the_observed_tcp(frame):
    """UMI's relative trajectory: with the denoiser's output zeroed (the one-step flow then returns
    its noise, denormalized), a relative-frame policy's chunk moves with the newest observed TCP
    position by exactly its shift (orientation and gripper do not); "relative_xy" moves in x and y
    only (z stays in the base frame); an absolute one does not move."""
    torch.manual_seed(0)
    cfg = dict(SMALL, proprio_dim=8, action_dim=8, sample_steps=1)
    m = GenerativePolicyModel(ModelConfig(**cfg, kind="flow", action_frame=frame)).eval()
    last = [mod for mod in m.net.unet.modules() if isinstance(mod, torch.nn.Conv1d)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"))
    rng = np.random.default_rng(0)
    o = obs(rng)
    o["state"] = rng.standard_normal((2, 8)).astype(np.float32)
    noise = rng.standard_normal((1, 8, 8)).astype(np.float32)
    a0 = pol.predict(o, noise=noise)
    shift = np.array([0.05, -0.02, 0.01], np.float32)
    o2 = dict(o, state=o["state"].copy())
    o2["state"][-1, :3] += shift
    o2["state"][0, :3] -= 1.0  # an older step of the window is not the reference
    a1 = pol.predict(o2, noise=noise)
    expect = {"relative": shift, "relative_xy": shift * [1, 1, 0], "absolute": np.zeros(3, np.float32)}[frame]
    np.testing.assert_allclose(a1[:, :3] - a0[:, :3], np.broadcast_to(expect, (8, 3)), atol=1e-5)
    np.testing.assert_allclose(a1[:, 3:], a0[:, 3:], atol=1e-5)
    # the training loss sees the actions in the model's frame: to_world inverts to_model_frame
    a = torch.randn(4, 8, 8)
    s = torch.randn(4, 2, 8)
    torch.testing.assert_close(m.to_world(m.to_model_frame(a, s), s), a)
    if frame == "relative":
        torch.testing.assert_close(m.to_model_frame(a, s)[..., :3], a[..., :3] - s[:, -1:, :3])
    if frame == "relative_xy":
        torch.testing.assert_close(m.to_model_frame(a, s)[..., :2], a[..., :2] - s[:, -1:, :2])
        torch.testing.assert_close(m.to_model_frame(a, s)[..., 2:], a[..., 2:])


@pytest.mark.parametrize("kind,steps", [("flow", 1), ("ddim", 4)])
def test_noise_scale_zero_gives_one_deterministic_chunk(kind, steps):
    """noise_scale scales the sampler's initial noise: at 0 every call returns the chunk sampled
    from zero noise (two policies with different seeds agree); at 1 the chunks vary."""
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**{**SMALL, "sample_steps": steps}, kind=kind)).eval()
    o = obs(np.random.default_rng(0))
    zero = GenerativePolicy(m, TorchDenoiser(m, "cpu")).predict(o, noise=np.zeros((1, 8, 3), np.float32))
    a = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=1, noise_scale=0.0)
    b = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=2, noise_scale=0.0)
    np.testing.assert_allclose(a.predict(o), zero, atol=1e-6)
    np.testing.assert_allclose(a.predict(o), b.predict(o), atol=1e-6)
    c = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=1)
    assert np.abs(c.predict(o) - c.predict(o)).max() > 1e-3  # scale 1: each call its own noise
    with pytest.raises(ValueError, match="noise_scale"):
        GenerativePolicy(m, TorchDenoiser(m, "cpu"), noise_scale=-1.0)


def test_a_short_rtc_prefix_is_padded_with_its_last_action_never_with_the_dataset_mean(monkeypatch):
    """The guidance target beyond a k-action prefix holds the prefix's last action (normalized),
    not zeros, which decode to the dataset's mean action (lerobot#4454)."""
    m, o, noise, prev = _rtc_case("flow", 4)
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"))
    seen = {}
    sample = m.sampler.sample

    def spy(denoise, x, steps, guide=None):
        seen["target"] = None if guide is None else guide[0].copy()
        return sample(denoise, x, steps, guide=guide)

    monkeypatch.setattr(m.sampler, "sample", spy)
    pol.predict(o, committed_prefix=prev[:3], frozen=2, noise=noise, guidance="jacobian_free")
    target = seen["target"][0]
    assert target.shape == (8, 3)
    assert np.abs(target[3:] - target[2]).max() == 0.0  # every padded row is the last real action
    last = m.denormalize(torch.as_tensor(target[7:8])).numpy()
    mean = m.denormalize(torch.zeros(1, 3)).numpy()
    assert np.abs(last - mean).max() > 1e-3  # and that is not the mean the zeros would have given
