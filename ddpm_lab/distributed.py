"""Several processes, one model: the small layer between ``torchrun`` and the trainer and sampler.

``torchrun --nproc_per_node N -m ddpm_lab.train ...`` starts N copies of the program and tells each its
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment; :func:`init` reads them and joins the
process group (``nccl`` on CUDA, one GPU per process; ``gloo`` on CPU). Without those variables the program
runs as a single process and nothing here does anything. PyTorch does all process management.

How work is split, so that the result does not depend on N:

- training: the global batch B is fixed by the config; at every step each rank takes its contiguous
  B/N slice of the step's batch (:func:`shard`), and DistributedDataParallel averages the gradients, so
  a step is the same step as on one process with batch B (up to the order of float additions);
- sampling: the samples are cut into fixed batches, batch k is drawn with its own seed and done by
  rank k mod N, and rank 0 gathers them back in order (:func:`gather_batches`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "init", "shard", "all_mean", "any_true", "gather_batches", "barrier", "close"]


@dataclass(frozen=True)
class Dist:
    """Where this process sits: ``rank`` of ``world`` processes; ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device: str | torch.device | None = None) -> tuple[Dist, torch.device]:
    """Join the process group if started by ``torchrun`` (else a 1-process ``Dist``); pick this rank's device.

    Under torchrun on a machine with GPUs, rank r uses ``cuda:LOCAL_RANK`` and the ``nccl`` backend;
    with ``device="cpu"`` or no GPU it uses the CPU and ``gloo``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if world <= 1:
        return Dist(), torch.device(device or ("cuda" if use_cuda else "cpu"))
    d = Dist(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ["LOCAL_RANK"]))
    if use_cuda:
        dev = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
    return d, dev


def shard(global_batch: int, d: Dist) -> slice:
    """This rank's contiguous slice of a global batch; the batch must split evenly."""
    if global_batch % d.world:
        raise ValueError(f"the global batch ({global_batch}) must be divisible by the number of processes "
                         f"({d.world}); pick --batch as a multiple of {d.world}")
    n = global_batch // d.world
    return slice(d.rank * n, (d.rank + 1) * n)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of ``x`` over ranks (x itself on one process)."""
    if not d.active:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / d.world


def any_true(flag: bool, device: torch.device, d: Dist) -> bool:
    """True on every rank if ``flag`` is true on any rank: ranks agree on when to stop."""
    if not d.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_batches(mine: dict[int, Any], d: Dist) -> list[Any] | None:
    """Rank 0 gets every rank's ``{batch index: result}`` merged and ordered by index; others get None."""
    if not d.active:
        return [mine[k] for k in sorted(mine)]
    parts: list[dict[int, Any] | None] = [None] * d.world if d.main else []  # type: ignore[list-item]
    dist.gather_object(mine, parts if d.main else None, dst=0)
    if not d.main:
        return None
    merged = {k: v for part in parts if part for k, v in part.items()}
    return [merged[k] for k in sorted(merged)]


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def close(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
