"""Policy backends for trained models: ``checkpoint`` (torch eager) and ``onnx`` (ONNX Runtime).

Both serve a :class:`robot_stack.policies.generative.GenerativePolicy`. These config classes import
no torch or ONNX Runtime, so ``robot-stack check`` stays fast; ``build`` loads the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from robot_stack.runtime.devices import Check, DeviceConfig, path_check

log = logging.getLogger(__name__)


class CheckpointConfig(DeviceConfig):
    """Policy backend ``checkpoint``: a ``.safetensors`` checkpoint run in torch eager mode.

    Keys: ``path`` (the checkpoint), ``seed`` (sampling noise; None: random), ``noise_scale``
    (the sampler's initial noise, 0..: 1 samples the learned distribution, 0 gives one
    deterministic chunk per observation; :class:`GenerativePolicy`), ``device``
    ("cpu", "cuda", "cuda:N"; None: CUDA when present), ``compile`` (a ``torch.compile`` mode).
    """

    type: Literal["checkpoint"] = "checkpoint"
    requires = ("torch", "safetensors")
    path: str = Field(..., description="a .safetensors checkpoint written by robot-stack train")
    seed: int | None = Field(None, description="seed of the sampling noise (None: random)")
    noise_scale: float = Field(1.0, ge=0, description="scale of the sampler's initial noise (0: deterministic chunks)")
    device: str | None = Field(None, description="torch device (None: cuda when available, else cpu)")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile mode (reduce-overhead: CUDA graphs on a GPU); the first chunk compiles"
    )

    def doctor(self) -> list[Check]:
        return [path_check(f"checkpoint {self.path}", self.path, "train one (robot-stack train) or fix the path")]

    def build(self, ctx, params):
        from robot_stack.policies.generative import GenerativePolicy, TorchDenoiser, load_checkpoint

        if self.device and self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    f"backend device {self.device}: this torch sees no GPU "
                    f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
                )
        model, _ = load_checkpoint(Path(self.path))
        backend = TorchDenoiser(model, device=self.device, compile=self.compile)
        log.info("serving %s (%s, torch on %s)", self.path, model.cfg.kind, backend.device)
        return GenerativePolicy(model, backend, seed=self.seed, noise_scale=self.noise_scale)


class OnnxConfig(DeviceConfig):
    """Policy backend ``onnx``: a ``robot-stack export`` model on ONNX Runtime.

    The encoder and denoiser graphs run on the TensorRT, CUDA or CPU provider, in that order of
    preference, as installed.

    Keys: ``path`` (the export's ``X.onnx`` name; its checkpoint ``X.safetensors`` lies beside it
    and supplies the normalization and sampler settings), ``seed``, ``noise_scale`` (as for
    ``checkpoint``), ``providers`` (None: best available).
    """

    type: Literal["onnx"] = "onnx"
    requires = ("onnxruntime", "torch", "safetensors")
    path: str = Field(..., description="the export's X.onnx name, with X.safetensors beside it")
    seed: int | None = Field(None, description="seed of the sampling noise (None: random)")
    noise_scale: float = Field(1.0, ge=0, description="scale of the sampler's initial noise (0: deterministic chunks)")
    providers: list[str] | None = Field(None, description="ONNX Runtime execution providers (None: best available)")

    def doctor(self) -> list[Check]:
        return [
            path_check(f"ONNX export {self.path}", self.path, "export one (robot-stack export-onnx) or fix the path")
        ]

    def build(self, ctx, params):
        from robot_stack.policies.generative import GenerativePolicy, OnnxDenoiser, load_checkpoint

        model, _ = load_checkpoint(Path(self.path).with_suffix(".safetensors"))
        backend = OnnxDenoiser(self.path, providers=self.providers, threads=params.threads)
        log.info("serving %s (%s, %s)", self.path, model.cfg.kind, backend.providers[0])
        return GenerativePolicy(model, backend, seed=self.seed, noise_scale=self.noise_scale)
