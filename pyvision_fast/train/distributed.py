"""torch.distributed as the engine uses it: set up from torchrun's environment, shard samplers, reductions.

``torchrun --nproc-per-node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; the
engine then joins the process group (NCCL on CUDA, gloo on CPU) and wraps the model in DDP. Without them it runs
as a single process (world size 1) and nothing here touches torch.distributed.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a usable GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Joins the process group torchrun describes (``env://``: NCCL on CUDA, gloo on CPU) and returns this
    process's rank info and device; a single process (no ``WORLD_SIZE`` > 1) touches no process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo() if world_size <= 1 else DistInfo(int(os.environ["RANK"]), world_size,
                                                        int(os.environ.get("LOCAL_RANK", "0")))
    dev = resolve_device(device, info.local_rank)
    if info.enabled and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return info, dev


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seeds ``random`` and NumPy from the worker's torch seed (which torch derives
    from the loader's base seed, itself drawn from the main process's seeded RNG), so augmentations that use
    them repeat with the seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the processes (a copy; the input itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class ShardSampler(Sampler[int]):
    """Per-epoch order of a training (or evaluation) set, sharded over ranks without padding or duplicates.

    The epoch's order is a permutation drawn from ``seed + epoch`` (``torch.randperm``) when ``shuffle``, the
    dataset order otherwise; with ``weights`` it is ``len(weights)`` draws with replacement
    (``torch.multinomial``), i.e. a class-balanced epoch. Rank ``r`` of ``W`` takes positions ``r, r + W, ...``
    of that order, as ``torch.utils.data.DistributedSampler`` does. So the union of the ranks' ``k``-th batches of
    size ``b`` is exactly the ``k``-th batch of size ``W * b`` of a single process, which is what makes a DDP run
    equal to a one-process run with the global batch.

    When the length is not divisible by ``W``: with ``pad`` (training) the order is extended with its own first
    samples, as ``DistributedSampler`` does, so that every rank runs the same number of steps (DDP's gradient
    all-reduce needs every rank in every step); without it (evaluation) nothing is repeated and the first ranks get
    one sample more, so torchmetrics' synchronised states count every sample exactly once.

    ``set_epoch(epoch)`` must be called before each epoch; the order depends only on ``(seed, epoch)``, which is
    what makes a resumed run see the same data as an uninterrupted one.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 weights: Optional[torch.Tensor] = None, pad: bool = False):
        if weights is not None and len(weights) != length:
            raise ValueError(f"ShardSampler: {len(weights)} weights for {length} samples")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.shuffle, self.seed, self.weights, self.pad = shuffle, seed, weights, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """The whole epoch's order (int64, ``(length,)``) before sharding."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights.double(), self.length, replacement=True, generator=g)
        if self.shuffle:
            return torch.randperm(self.length, generator=g)
        return torch.arange(self.length)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        if self.pad and self.length % self.world_size:
            extra = self.world_size - self.length % self.world_size
            order = torch.cat([order, order.repeat(math.ceil(extra / max(self.length, 1)))[:extra]])
        return iter(order[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.length / self.world_size)
        return math.ceil((self.length - self.rank) / self.world_size) if self.length > self.rank else 0
