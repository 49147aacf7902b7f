"""MP1's parts on the model side: the DP3 point-cloud encoder, the dispersive loss, a MeanFlow
policy on point clouds (learns, exports to ONNX with parity)."""

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
from robot_stack.policies.networks import PointEncoder, dispersive_loss

PTS = dict(
    cameras={"scene": "points"},
    n_points=64,
    proprio_dim=4,
    obs_horizon=2,
    horizon=8,
    action_dim=3,
    widths=(32, 64),
    sample_steps=1,
    kind="meanflow",
)


def test_the_point_encoder_ignores_point_order():
    torch.manual_seed(0)
    enc = PointEncoder(16).eval()
    pts = torch.randn(2, 100, 3)
    perm = pts[:, torch.randperm(100)]
    torch.testing.assert_close(enc(pts), enc(perm))
    assert not torch.allclose(enc(pts)[0], enc(pts)[1])


def test_the_dispersive_loss_is_zero_for_equal_embeddings_and_pushes_them_apart():
    z = torch.ones(8, 16)
    assert abs(float(dispersive_loss(z))) < 1e-6
    z = (torch.randn(8, 16) * 0.1).requires_grad_(True)
    before = torch.pdist(z).mean().item()
    dispersive_loss(z).backward()
    with torch.no_grad():
        z2 = z - 0.5 * z.grad
    assert float(dispersive_loss(z2)) < float(dispersive_loss(z.detach())) and torch.pdist(z2).mean().item() > before


@pytest.mark.slow  # trains a model
def test_a_meanflow_policy_on_point_clouds_learns_and_exports(tmp_path):
    """The chunk is the position of an object (a cluster of points above a table plane): only the
    point encoder can see it. One-step MeanFlow with the dispersive loss learns it (0.067 error
    against a 0.19 spread in 400 steps on this machine; one-step flow matching: no better than the
    spread in 200)."""
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**PTS, dispersive_weight=0.1))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n):
        obj = torch.rand(n, 3, generator=g) * torch.tensor([1.0, 1.0, 0.2]) + torch.tensor([-0.5, -0.5, 0.1])
        cube = torch.randn(n, 32, 3, generator=g) * 0.02 + obj[:, None]  # the object's points
        table = torch.rand(n, 32, 3, generator=g) * torch.tensor([2.0, 2.0, 0.0]) - torch.tensor([1.0, 1.0, 0.0])
        clouds = torch.cat([cube, table], 1)
        return clouds[:, None].repeat(1, 2, 1, 1), obj[:, None].repeat(1, 8, 1) * 0.8

    for _ in range(400):  # (about 40 s on 2 CPU cores)
        clouds, actions = batch(32)
        loss = m.loss([clouds], torch.zeros(32, 2, 4), actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0)
    assert pol.metadata.obs_shapes["scene.points"] == ((64, 3), "<f4")
    clouds, actions = batch(16)
    errs = [
        np.abs(
            pol.predict({"scene.points": clouds[i].numpy(), "state": np.zeros((2, 4), np.float32)}) - actions[i].numpy()
        ).mean()
        for i in range(16)
    ]
    spread = actions[:, 0].std(0).mean().item()
    print(f"\npoint-cloud MeanFlow: one-step error {np.mean(errs):.3f} (targets spread {spread:.3f})")
    assert np.mean(errs) < 0.5 * spread
    path = export_onnx(m, tmp_path / "mp1.onnx")
    o = {"scene.points": clouds[0].numpy(), "state": np.zeros((2, 4), np.float32)}
    noise = np.random.default_rng(1).standard_normal((1, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        pol.predict(o, noise=noise),
        GenerativePolicy(m, OnnxDenoiser(path, ["CPUExecutionProvider"]), seed=0).predict(o, noise=noise),
        atol=1e-4,
    )
