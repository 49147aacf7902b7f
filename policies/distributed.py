"""Training beyond one process: ``torchrun`` + DistributedDataParallel (DDP).

``robot-stack train --nproc N`` re-runs itself under ``torchrun --standalone --nproc-per-node N``
(PyTorch's elastic launcher, a rendezvous on localhost); every rank then calls
:func:`robot_stack.policies.training.train`, which asks :func:`setup` for its place:

- the process group: gloo on CPU, NCCL on GPUs (one GPU per rank, ``cuda:LOCAL_RANK``);
- the sampler per rank: every rank draws the same global batch from the same seeded generator
  and trains on its own slice ``rows[rank::world]`` (:func:`shard`), so N ranks see exactly the
  batches of a 1-rank run with the same global ``batch_size``, and DDP's gradient mean over ranks
  is the global batch's gradient;
- checkpoints are written by rank 0 (the unwrapped model and its optimizer state), so they resume
  on any world size.

Sources: PyTorch DDP and torchrun docs (torch.nn.parallel.DistributedDataParallel,
torch.distributed.run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Place:
    """This process's place in the job: ``rank`` of ``world`` processes, its torch ``device``."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, validates and writes checkpoints."""
        return self.rank == 0


def setup(device: str) -> Place:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1), else a 1-rank place.

    Args:
        device: "cpu" or "cuda" (the caller's resolved device).
    Raises:
        RuntimeError: NCCL asked for with fewer GPUs than local ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Place(0, 1, device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if torch.cuda.device_count() <= local:
            raise RuntimeError(f"rank {rank}: local rank {local} needs a GPU, {torch.cuda.device_count()} visible")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Place(rank, world, device)


def shard(rows: np.ndarray, place: Place) -> np.ndarray:
    """This rank's slice of a global batch's rows (every ``world``-th, from ``rank``).

    Raises:
        ValueError: a global batch that does not split evenly (ranks would weigh samples unequally).
    """
    if len(rows) % place.world:
        raise ValueError(f"batch_size {len(rows)} does not split over {place.world} ranks")
    return rows[place.rank :: place.world]


def mean_over_ranks(x: float, place: Place) -> float:
    """The mean of ``x`` over all ranks (the global batch's loss); ``x`` itself on one rank."""
    if place.world == 1:
        return x
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64, device=place.device)
    dist.all_reduce(t)
    return float(t.item()) / place.world


def gather_float(x: float, place: Place) -> list[float]:
    """``x`` from every rank, in rank order (``[x]`` on one rank)."""
    if place.world == 1:
        return [x]
    import torch.distributed as dist

    parts = [torch.zeros(1, dtype=torch.float64, device=place.device) for _ in range(place.world)]
    dist.all_gather(parts, torch.tensor([x], dtype=torch.float64, device=place.device))
    return [float(t.item()) for t in parts]


def barrier(place: Place) -> None:
    if place.world > 1:
        import torch.distributed as dist

        dist.barrier()


def teardown(place: Place) -> None:
    if place.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LossModule(torch.nn.Module):
    """``forward`` = the model's training loss, so DDP (which syncs gradients of what its forward
    ran) wraps it: images per camera (B, To, C, h, w), proprio (B, To, P), actions (B, H, D)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, proprio: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.model.loss([images], proprio, actions)


def wrap(model: torch.nn.Module, place: Place) -> torch.nn.Module:
    """The loss module, under DDP when there is more than one rank."""
    m = LossModule(model)
    if place.world == 1:
        return m
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        m, device_ids=[int(place.device.split(":")[1])] if place.device.startswith("cuda") else None
    )


def torchrun_argv(nproc: int, module_argv: list[str]) -> list[str]:
    """The command that runs ``python -m robot_stack.cli <module_argv>`` on ``nproc`` local ranks."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "robot_stack.cli",
        *module_argv,
    ]
