"""Data-parallel training across processes (``torchrun --nproc-per-node N orbdistill train``).

The scheme keeps a distributed run equal to a single-process run with the same global
batch, step for step (up to the order of floating-point sums):

* every rank draws the same global batches (the order derives from the seed and the
  epoch) and evaluates its shard of each, ``batch[rank::world]``;
* loss terms are sums of squared errors divided by the *global* counts (structures, force
  components, stress entries: an ``all_reduce`` of the shard counts), so the sum over ranks
  of the shard gradients is the gradient of the global batch's loss;
* gradients are summed with ``all_reduce``; every rank then clips and steps identically,
  so parameters and the EMA stay equal on all ranks without further communication;
* rank 0 alone logs, writes checkpoints and packages; every rank can resume from them.

Gradients are reduced by hand rather than through ``DistributedDataParallel``: students
train on forces from ``torch.autograd.grad(create_graph=True)``, and an explicit
``all_reduce`` after ``backward`` is exact and independent of DDP's bucket hooks.
Backend: gloo on CPU, nccl on CUDA (device ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights and buffers on every rank (same seed gives the same start; this
        makes it so whatever the seed handling of a caller)."""
        if self.enabled:
            for t in list(module.parameters()) + list(module.buffers()):
                torch.distributed.broadcast(t.data, src=0)

    def shard(self, items: list) -> list:
        return items[self.rank::self.world] if self.enabled else items


def context_from_env(device: str = "cpu") -> DistContext:
    """The process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``),
    initialised on first use; a plain process gets a context of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        # long timeout: rank 0 may label data for hours while the others wait at a barrier
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(hours=48))
        log.info("process group: rank %d of %d (%s)", rank, world, backend)
    return DistContext(world=world, rank=rank, local_rank=local_rank)


def device_for(ctx: DistContext, device: str) -> str:
    """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if ctx.enabled and str(device) == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device
