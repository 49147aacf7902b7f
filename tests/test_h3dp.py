"""H3DP's parts (policies/generative.py "layered" cameras; networks.MultiScaleEncoder, scale_weights):
exact depth layering, the coarse-to-fine schedule, the gate on the conditioning, learning, ONNX."""

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
    depth_layers,
    export_onnx,
)
from robot_stack.policies.networks import MultiScaleEncoder, scale_weights

H3 = dict(
    cameras={"scene": "layered"},
    image_hw=(64, 64),
    proprio_dim=4,
    obs_horizon=2,
    horizon=8,
    action_dim=3,
    enc_base=8,
    widths=(32, 64),
    sample_steps=2,
    depth_layers=(0.0, 0.5, 1.0, 3.0),
)


def test_depth_layering_puts_each_pixel_in_its_layer():
    color = np.full((1, 4, 4, 3), 255, np.uint8)
    depth = np.array([[[300, 700, 1500, 0]] * 4], np.uint16)  # 0.3, 0.7, 1.5 m and no depth, per column
    x = depth_layers(color, depth, (0.0, 0.5, 1.0, 3.0))
    assert x.shape == (1, 12, 4, 4)
    layer = x[0].reshape(3, 4, 4, 4)  # (layer, rgb+d, h, w)
    for k, col in enumerate((0, 1, 2)):
        assert torch.all(layer[k, :3, :, col] == 1.0)  # its color is in layer k only
        assert torch.allclose(layer[k, 3, :, col], torch.tensor(depth[0, 0, col] / 2000.0, dtype=torch.float32))
        others = [j for j in range(3) if j != k]
        assert torch.all(layer[others, :, :, col] == 0)
    assert torch.all(x[0, :, :, 3] == 0)  # no depth: in no layer


def test_coarse_features_lead_at_the_noisy_start_and_fine_ones_at_the_end():
    w = scale_weights(torch.tensor([0.0, 0.5, 1.0]), 3)
    assert w.shape == (3, 3) and torch.allclose(w.mean(1), torch.ones(3))
    assert w[0].argmax() == 0 and w[1].argmax() == 1 and w[2].argmax() == 2


def test_the_encoder_reads_three_scales_and_the_gate_follows_the_time():
    torch.manual_seed(0)
    enc = MultiScaleEncoder(12, base=8, out_dim=16, scales=3)
    assert enc(torch.rand(2, 12, 64, 64)).shape == (2, 48)
    for kind, noisy, clean in (("flow", 0.0, 1.0), ("ddim", 1.0, 0.0)):
        m = GenerativePolicyModel(ModelConfig(**H3, kind=kind)).eval()
        net = m.net
        cond = torch.ones(1, net.obs_horizon * net.step_dim)
        g0 = net._coarse_to_fine(cond, torch.tensor([noisy])).reshape(net.obs_horizon, net.step_dim)
        g1 = net._coarse_to_fine(cond, torch.tensor([clean])).reshape(net.obs_horizon, net.step_dim)
        f = net.feat_dim
        coarse, fine = slice(0, f), slice(2 * f, 3 * f)
        assert g0[0, coarse].mean() > 2 * g0[0, fine].mean() and g1[0, fine].mean() > 2 * g1[0, coarse].mean(), kind
        assert torch.all(g0[:, 3 * f :] == 1)  # proprioception is not gated


@pytest.mark.slow  # trains a model
def test_a_layered_policy_learns_where_the_near_object_is_and_exports(tmp_path):
    """The chunk is the image position of the one near object (0.3 m); a far one (2 m) is clutter
    the depth layers separate."""
    torch.manual_seed(0)
    m = GenerativePolicyModel(ModelConfig(**H3, kind="flow"))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)

    def sample():
        color = np.full((2, 64, 64, 3), 128, np.uint8)
        depth = np.full((2, 64, 64), 2500, np.uint16)
        (ny, nx), (fy, fx) = rng.integers(8, 56, 2), rng.integers(8, 56, 2)
        depth[:, ny - 6 : ny + 6, nx - 6 : nx + 6] = 300
        depth[:, fy - 6 : fy + 6, fx - 6 : fx + 6] = 2000
        color[:, ny - 6 : ny + 6, nx - 6 : nx + 6] = 200
        color[:, fy - 6 : fy + 6, fx - 6 : fx + 6] = 200
        target = np.tile(np.array([(nx - 32) / 32, (ny - 32) / 32, 0.0], np.float32), (8, 1))
        return {"scene.color": color, "scene.depth": depth, "state": np.zeros((2, 4), np.float32)}, target

    def images(batch):
        return [torch.cat([m.images(o)[0] for o, _ in batch])]

    for _ in range(150):  # (about 30 s on 2 CPU cores)
        batch = [sample() for _ in range(16)]
        loss = m.loss(images(batch), torch.zeros(16, 2, 4), torch.from_numpy(np.stack([t for _, t in batch])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    pol = GenerativePolicy(m, TorchDenoiser(m, "cpu"), seed=0)
    tests = [sample() for _ in range(12)]
    err = np.mean([np.abs(pol.predict(o)[:, :2] - t[:, :2]).mean() for o, t in tests])
    spread = np.std([t[0, :2] for _, t in tests], axis=0).mean()
    print(f"\nH3DP-style layered policy: chunk error {err:.3f} (target spread {spread:.3f})")
    assert err < 0.6 * spread
    path = export_onnx(m, tmp_path / "h3.onnx")
    noise = np.random.default_rng(1).standard_normal((1, 8, 3)).astype(np.float32)
    o = tests[0][0]
    np.testing.assert_allclose(
        pol.predict(o, noise=noise),
        GenerativePolicy(m, OnnxDenoiser(path, ["CPUExecutionProvider"]), seed=0).predict(o, noise=noise),
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="depth_layers"):
        ModelConfig(**{**H3, "depth_layers": (1.0, 0.5)})
