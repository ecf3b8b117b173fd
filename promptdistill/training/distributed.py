"""Data-parallel training under `torchrun` / `accelerate launch`: a few guarded lines.

A single process is the default and the tested path (WORLD_SIZE unset). With WORLD_SIZE > 1,
each rank trains on every world-th batch of the same global order (training/batching.py), the
LoRA gradients (a few MB) are averaged after the backward pass, and only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Dist:
    world: int
    rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes checkpoints, metrics and adapter."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """This process's place, from torchrun's variables; starts the process group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(world=world, rank=rank, device=device)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks."""
        if self.world > 1:
            torch.distributed.all_reduce(value)
            value = value / self.world
        return value

    def mean_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        if self.world > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on one: every rank stops at the same step, or the
        collectives hang."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()
