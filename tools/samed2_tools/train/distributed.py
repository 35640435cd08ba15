"""The process's place in a `torchrun` job (or a single process) and its device.

Under `torchrun --nproc-per-node N -m samed2_tools.cli train ...` the environment carries RANK, LOCAL_RANK
and WORLD_SIZE; the process group uses NCCL on CUDA and gloo on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from samed2.errors import InputError


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (as is, in a single process)."""
        if not self.distributed or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world).tolist()))

    def gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor (same shape in every process) from every process, concatenated along dim 0 in rank order."""
        if not self.distributed:
            return tensors
        gathered = []
        for tensor in tensors:
            local = tensor.to(self._collective_device)
            parts = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(parts, local)
            gathered.append(torch.cat(parts).to(tensor.device))
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def start_process(device: str) -> Process:
    """Join the torchrun process group if there is one; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Process(0, 1, pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Process(rank, world, chosen)


def end_process(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: this torch build or machine has no CUDA GPU")
    return device
