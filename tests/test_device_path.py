"""The GPU fast path's parts that run anywhere: the device check, torch.compile against eager, ONNX
Runtime's provider fallback named, a CUDA request refused clearly where there is no GPU; and, where
a GPU is present, every tensor of a served policy on it."""

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
    WrongDevice,
    check_device,
    export_onnx,
    save_checkpoint,
)


def _model(steps: int = 1) -> GenerativePolicyModel:
    torch.manual_seed(0)
    return GenerativePolicyModel(
        ModelConfig(
            cameras={"scene": "rgbd"}, image_hw=(64, 64), horizon=8, kind="flow", sample_steps=steps, widths=(32, 64)
        )
    ).eval()


def _obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "scene.color": rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8),
        "scene.depth": rng.integers(300, 1500, (2, 64, 64), dtype=np.uint16),
        "state": rng.standard_normal((2, 8)).astype(np.float32),
    }


def test_the_device_check_names_a_stray_tensor():
    m = _model()
    check_device(m, "cpu")
    m.a_min = m.a_min.to("meta")  # one buffer elsewhere
    with pytest.raises(WrongDevice, match="a_min is on meta"):
        check_device(m, "cpu")


def test_a_conditioning_off_the_device_is_refused():
    m = _model()
    be = TorchDenoiser(m, device="cpu")
    be._encode = lambda images, proprio: torch.zeros(1, 4, device="meta")
    with pytest.raises(WrongDevice, match="conditioning came out on meta"):
        be.bind(m.images(_obs()), _obs()["state"][None])


@pytest.mark.slow  # trains a model
def test_compiled_denoiser_matches_eager():
    """torch.compile (inductor; on a GPU "reduce-overhead" adds CUDA graphs) gives eager's chunk."""
    m = _model(steps=2)
    noise = np.random.default_rng(1).standard_normal((1, 8, 8)).astype(np.float32)
    eager = GenerativePolicy(m, TorchDenoiser(m, device="cpu"), seed=0).predict(_obs(), noise=noise)
    compiled = GenerativePolicy(m, TorchDenoiser(m, device="cpu", compile="default"), seed=0).predict(
        _obs(), noise=noise
    )
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    with pytest.raises(ValueError, match="compile must be"):
        TorchDenoiser(m, device="cpu", compile="fast")


def test_onnx_runtime_names_a_gpu_provider_it_cannot_use(tmp_path):
    import onnxruntime as ort

    path = export_onnx(_model(), tmp_path / "p.onnx")
    be = OnnxDenoiser(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if "CUDAExecutionProvider" in ort.get_available_providers() and be.providers[0] == "CUDAExecutionProvider":
        assert be.fallback is None
    else:  # this machine: the CPU build of onnxruntime
        assert be.providers[0] == "CPUExecutionProvider"
        assert "CUDAExecutionProvider not usable here" in be.fallback and "onnxruntime-gpu" in be.fallback


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_cuda_backend_without_a_gpu_is_refused_by_name(tmp_path):
    from robot_stack.policies.backends import CheckpointConfig

    save_checkpoint(_model(), tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="this torch sees no GPU"):
        CheckpointConfig(path=str(tmp_path / "p.safetensors"), device="cuda").build(None, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on a lent GPU machine)")
@pytest.mark.parametrize("compile", ["none", "reduce-overhead"])
def test_on_a_gpu_every_tensor_stays_there(compile):
    m = _model()
    be = TorchDenoiser(m, device="cuda", compile=compile)
    check_device(be.model, "cuda")
    d = be.bind(m.images(_obs()), _obs()["state"][None])
    out = d(np.zeros((1, 8, 8), np.float32), np.zeros(1, np.float32))
    assert out.shape == (1, 8, 8) and np.isfinite(out).all()
    eager = GenerativePolicy(_model(), TorchDenoiser(_model(), device="cpu"), seed=0)
    noise = np.random.default_rng(1).standard_normal((1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        GenerativePolicy(m, be, seed=0).predict(_obs(), noise=noise), eager.predict(_obs(), noise=noise), atol=2e-3
    )
