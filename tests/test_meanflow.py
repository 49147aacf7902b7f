"""MeanFlow (policies/samplers.py: MeanFlow; GenerativePolicyModel kind "meanflow"): the identity
its loss uses, exact one-step sampling with an exact average velocity, learning a bimodal action
distribution that one-step flow matching averages away, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_stack.policies.generative import (
    GenerativePolicy,
    GenerativePolicyModel,
    ModelConfig,
    OnnxDenoiser,
    TorchDenoiser,
    export_onnx,
)
from robot_stack.policies.samplers import MeanFlow

SMALL = dict(
    cameras={"scene": "rgb"},
    image_hw=(64, 64),
    proprio_dim=4,
    obs_horizon=2,
    horizon=8,
    action_dim=3,
    enc_base=8,
    widths=(32, 64),
    sample_steps=1,
)
C = np.array([0.3, -0.2, 0.5], np.float32)


def exact_u(x, t):
    """The true average velocity when every chunk is the constant C: from x_s the straight path
    to C, u = (C - x_s) / (1 - s) whatever the interval's end."""
    s = t[:, 0].reshape(-1, 1, 1)
    return (C - x) / (1 - s)


def test_one_jump_with_the_exact_average_velocity_lands_on_the_data():
    noise = np.random.default_rng(0).standard_normal((4, 8, 3)).astype(np.float32)
    for steps in (1, 3):
        x = MeanFlow().sample(exact_u, noise, steps)
        np.testing.assert_allclose(x, np.broadcast_to(C, x.shape), atol=1e-5)


def test_the_training_target_is_a_fixed_point_of_the_exact_average_velocity():
    """The identity the loss uses, u = v + (e - s)(v . d_x u + d_s u) by JVP, holds for the true
    average velocity of a flow with curved paths: 1-D data N(mu, sig^2) from noise N(0, 1), where
    x_tau = tau mu + std(tau) z, std(tau) = sqrt((1 - tau)^2 + tau^2 sig^2), v the marginal velocity.
    The identity with the paper's sign (its time runs the other way) does not hold here."""
    mu, sig = 0.7, 0.3

    def std(t):
        return torch.sqrt((1 - t) ** 2 + t**2 * sig**2)

    def u_fn(x, tt):
        s, e = tt[:, 0, None], tt[:, 1, None]
        xe = e * mu + std(e) * (x - s * mu) / std(s)
        return (xe - x) / (e - s)

    def v_fn(x, t):
        dstd = (-(1 - t) + t * sig**2) / std(t)
        return mu + (x - t * mu) * dstd / std(t)

    x = torch.tensor([[-1.0], [0.2], [0.5], [1.3]])
    s = torch.tensor([0.1, 0.3, 0.5, 0.2])
    e = torch.tensor([0.9, 0.6, 0.95, 0.4])
    v = v_fn(x, s[:, None])
    u, du = torch.func.jvp(u_fn, (x, torch.stack([s, e], 1)), (v, torch.stack([torch.ones(4), torch.zeros(4)], 1)))
    torch.testing.assert_close(v + (e - s)[:, None] * du, u, atol=1e-5, rtol=1e-5)
    assert ((v - (e - s)[:, None] * du) - u).abs().max() > 0.05


def _train(kind: str, steps: int = 300) -> GenerativePolicyModel:
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**SMALL, kind=kind))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):  # two modes, nothing observable tells them apart
        sign = torch.randint(0, 2, (32, 1, 1), generator=g).float() * 2 - 1
        actions = sign * 0.6 * torch.ones(32, 8, 3)
        loss = m.loss([torch.zeros(32, 2, 3, 64, 64)], torch.zeros(32, 2, 4), actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _mode_error(m: GenerativePolicyModel) -> float:
    """Mean distance of one-step chunks from the nearer mode (+-0.6 everywhere)."""
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0)
    o = {"scene.color": np.zeros((2, 64, 64, 3), np.uint8), "state": np.zeros((2, 4), np.float32)}
    errs = []
    for _ in range(24):
        a = pol.predict(o)
        errs.append(min(np.abs(a - 0.6).mean(), np.abs(a + 0.6).mean()))
    return float(np.mean(errs))


@pytest.mark.slow  # trains a model
def test_one_step_meanflow_keeps_both_modes_where_one_step_flow_averages_them():
    mf, fl = _mode_error(_train("meanflow")), _mode_error(_train("flow"))
    print(f"\none-step chunk distance from the nearer mode: meanflow {mf:.3f}, flow {fl:.3f}")
    assert fl > 0.3  # one Euler step of flow matching lands between the modes
    assert mf < 0.4 * fl


def test_meanflow_onnx_matches_torch(tmp_path):
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**{**SMALL, "sample_steps": 2}, kind="meanflow")).eval()
    path = export_onnx(m, tmp_path / "mf.onnx")
    o = {
        "scene.color": np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8),
        "state": np.ones((2, 4), np.float32),
    }
    noise = np.random.default_rng(1).standard_normal((1, 8, 3)).astype(np.float32)
    a = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0).predict(o, noise=noise)
    b = GenerativePolicy(m, OnnxDenoiser(path, ["CPUExecutionProvider"]), seed=0).predict(o, noise=noise)
    np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="not defined for meanflow"):
        GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0).predict(
            o, committed_prefix=np.zeros((2, 3), np.float32), guidance="exact"
        )


def test_meanflow_embeds_time_at_scale_one_and_old_checkpoints_keep_theirs(tmp_path):
    """MeanFlow's target holds the network's time derivative: its time embedding reads t at scale
    1 (ddim and flow keep DDPM's 1000). A checkpoint written before the setting existed was trained
    at 1000 and loads at 1000, predicting what it predicted before."""
    import dataclasses
    import json

    from safetensors.torch import save_file

    from robot_stack.policies.generative import load_checkpoint

    assert ModelConfig(**SMALL, kind="meanflow").time_scale == 1.0
    assert ModelConfig(**SMALL, kind="flow").time_scale == ModelConfig(**SMALL, kind="ddim").time_scale == 1000.0
    with pytest.raises(ValueError, match="time_scale"):
        ModelConfig(**SMALL, kind="meanflow", time_scale=0.0)
    torch.manual_seed(0)
    old = GenerativePolicyModel(ModelConfig(**SMALL, kind="meanflow", time_scale=1000.0)).eval()
    cfg = dataclasses.asdict(old.cfg)
    del cfg["time_scale"]  # as written before the field existed
    save_file(
        {k: v.contiguous() for k, v in old.state_dict().items()},
        str(tmp_path / "old.safetensors"),
        metadata={"config": json.dumps(cfg), "extra": "{}"},
    )
    loaded, _ = load_checkpoint(tmp_path / "old.safetensors")
    assert loaded.cfg.time_scale == 1000.0
    x, cond = torch.randn(2, 8, 3), torch.randn(2, old.net.obs_horizon * old.net.step_dim)
    t = torch.tensor([[0.0, 1.0], [0.3, 0.6]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, t, cond), old.net(x, t, cond))
        rescaled = GenerativePolicyModel(ModelConfig(**SMALL, kind="meanflow"))
        rescaled.load_state_dict(old.state_dict())
        assert (rescaled.eval().net(x, t, cond) - old.net(x, t, cond)).abs().max() > 1e-3  # the scale matters
