"""Diffusion / flow policies: shapes, learning signal, ONNX parity, RTC prefix inpainting."""

import numpy as np
import pytest
import torch

from robot_stack.policies.generative import (
    GenerativePolicy, GenerativePolicyModel, ModelConfig, OnnxDenoiser, TorchDenoiser, export_onnx,
)

SMALL = dict(cameras={"scene": "rgbd"}, image_hw=(64, 64), proprio_dim=4, obs_horizon=2, horizon=8, action_dim=3,
             enc_base=8, widths=(32, 64), sample_steps=4)


def obs(rng):
    return {"scene.color": rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8),
            "scene.depth": rng.integers(300, 1500, (2, 64, 64), dtype=np.uint16),
            "state": rng.standard_normal((2, 4)).astype(np.float32)}


@pytest.mark.parametrize("kind", ["ddim", "flow"])
def test_training_reduces_loss_on_a_learnable_task(kind):
    """Actions are a fixed function of the proprioceptive state: the loss must fall well below
    its starting value within a few dozen CPU steps."""
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**SMALL, kind=kind))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(60):
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
    np.testing.assert_allclose(OnnxDenoiser(path, ["CPUExecutionProvider"]).bind(imgs, st)(noise, t),
                               TorchDenoiser(m, "cpu").bind(imgs, st)(noise, t), atol=1e-4)
    # ... and the whole chunk to 0.1 % of the normalized range (DDIM's 1/sqrt(alpha_bar) at the first,
    # noisiest step amplifies the last-bit differences)
    np.testing.assert_allclose(a_onnx, a_torch, atol=2e-3)
    other = GenerativePolicy(m, TorchDenoiser(m, "cpu")).predict(o, noise=noise + 1)
    assert np.abs(other - a_torch).max() > 1e-3  # the output depends on the noise: parity is not trivial


@pytest.mark.parametrize("kind", ["ddim", "flow"])
def test_rtc_prefix_is_reproduced_and_rest_generated(kind):
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**SMALL, kind=kind)).eval()
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0)
    rng = np.random.default_rng(1)
    prefix = rng.uniform(-0.5, 0.5, (3, 3)).astype(np.float32)
    a = pol.predict(obs(rng), committed_prefix=prefix)
    np.testing.assert_allclose(a[:3], prefix, atol=1e-4)
    assert np.all(np.isfinite(a[3:])) and not np.allclose(a[3:], 0)


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
    np.testing.assert_array_equal(GenerativePolicy(m, TorchDenoiser(m, "cpu")).predict(o, noise=noise),
                                  GenerativePolicy(m2, TorchDenoiser(m2, "cpu")).predict(o, noise=noise))
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
    cfg_path.write_text(f"name: pol\nrun_dir: {run_dir}\nnodes:\n  policy:\n    kind: policy\n"
                        f"    params: {{backend: {{type: onnx, path: \"{tmp_path / 'pol.onnx'}\", seed: 0}}}}\n")

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
    assert client.request("infer", ObservationWindow(request_id=4, obs=o, obs_age_ns=np.zeros(2, np.int64))).request_id == 4


def test_export_onnx_cli(tmp_path):
    from robot_stack.cli import main
    from robot_stack.policies.generative import save_checkpoint

    m = GenerativePolicyModel(ModelConfig(**SMALL, kind="ddim")).eval()
    save_checkpoint(m, tmp_path / "p.safetensors")
    assert main(["export-onnx", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "out" / "q.onnx")]) == 0
    assert (tmp_path / "out" / "q.encoder.onnx").is_file() and (tmp_path / "out" / "q.denoiser.onnx").is_file()
    assert (tmp_path / "out" / "q.safetensors").is_file()  # the config travels with the export
    OnnxDenoiser(tmp_path / "out" / "q.onnx", ["CPUExecutionProvider"])
