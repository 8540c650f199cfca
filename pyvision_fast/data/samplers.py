"""Class-balanced sampling: the conservative re-weighting of MAE-SFER and a distributed weighted sampler.

MAE-SFER (``MSA-LMC/MAE-SFER:data/dataset.py``, ``ConservativeImbalancedDatasetSampler``) draws
``len(dataset)`` indices per epoch with replacement, sample ``i`` with probability proportional to
``min(max_count / count[y_i], 3)``: rare classes are up-weighted, but never by more than 3x. Here the weights are a
function (:func:`class_balanced_weights`) so they feed either

* one process: ``torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True)``;
* DDP: :class:`DistributedWeightedSampler` (below) — a ``DistributedSampler`` cannot wrap a weighted sampler
  directly, and drawing independently on each rank would give each rank a different epoch length if
  ``num_samples`` were not fixed. Every rank draws the same global multinomial sample from the same seed and epoch,
  then takes every ``world_size``-th index, so together the ranks see exactly one global draw per epoch (as one
  process would, up to padding to a multiple of the world size).

The training engine needs none of these classes: a recipe's ``train_sample_weights`` returns the weights and the
engine's sharding sampler (``train/distributed.py``) draws them the same way (one seeded multinomial per epoch,
rank ``r`` taking every ``world_size``-th index). The samplers here serve code outside the engine.

(The original keyed a per-class list by the order in which labels first appear in the dataset; here the weight is
looked up by class index, which is what the formula means.)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Iterator, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["class_balanced_weights", "DistributedWeightedSampler", "weighted_sampler"]


def _as_targets(targets) -> Tensor:
    if hasattr(targets, "targets") and not isinstance(targets, (Tensor, Sequence)):
        targets = targets.targets  # a dataset with a ``targets`` list
    t = torch.as_tensor(targets)
    if t.numel() == 0:
        raise ValueError("class_balanced_weights: no targets")
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"class_balanced_weights: targets must be a 1-D sequence of integer class indices, got "
                         f"shape {tuple(t.shape)} dtype {t.dtype}")
    if int(t.min()) < 0:
        raise ValueError(f"class_balanced_weights: negative class index {int(t.min())}")
    return t.long()


def class_balanced_weights(targets, max_ratio: Optional[float] = 3.0) -> Tensor:
    """Per-sample weights ``min(max_count / count[y_i], max_ratio)`` (MAE-SFER's conservative balance).

    Args:
        targets: class indices, a 1-D int sequence or tensor of N labels, or a dataset with a ``targets`` list.
        max_ratio: the cap (3 in MAE-SFER); ``None`` for plain inverse-frequency balance ``max_count / count``.

    Returns:
        float64 tensor (N,), every value in ``[1, max_ratio]`` (the largest class has weight 1). Classes absent from
        ``targets`` get no samples and so no weight.
    """
    t = _as_targets(targets)
    if max_ratio is not None and not max_ratio >= 1:
        raise ValueError(f"class_balanced_weights: max_ratio must be >= 1 or None, got {max_ratio}")
    counts = torch.bincount(t).double()
    per_class = counts.max() / counts.clamp_min(1)
    if max_ratio is not None:
        per_class = per_class.clamp_max(float(max_ratio))
    return per_class[t]


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, split across DDP ranks.

    Each epoch, all ranks draw the same ``total_size = ceil(num_samples / num_replicas) * num_replicas`` indices
    from ``torch.multinomial(weights, total_size, replacement=True)`` with a generator seeded by ``seed + epoch``;
    rank ``r`` yields ``indices[r::num_replicas]`` (``total_size / num_replicas`` indices, the same count on every
    rank). Call :meth:`set_epoch` at the start of every epoch, as with ``DistributedSampler``.

    Args:
        weights: (N,) non-negative sample weights (e.g. :func:`class_balanced_weights`).
        num_samples: indices drawn per epoch over all ranks (default N).
        num_replicas, rank: default from ``torch.distributed`` when initialised, else 1 and 0.
        seed: base seed, the same on every rank.
    """

    def __init__(self, weights: Union[Tensor, Sequence[float]], num_samples: Optional[int] = None,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None, seed: int = 0):
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.dim() != 1 or w.numel() == 0 or not bool((w >= 0).all()) or not float(w.sum()) > 0:
            raise ValueError("DistributedWeightedSampler: weights must be a non-empty 1-D tensor of non-negative "
                             "values with a positive sum")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedWeightedSampler: need 0 <= rank ({rank}) < num_replicas ({num_replicas})")
        self.weights, self.num_replicas, self.rank, self.seed, self.epoch = w, num_replicas, rank, seed, 0
        total = len(w) if num_samples is None else int(num_samples)
        if total < 1:
            raise ValueError(f"DistributedWeightedSampler: num_samples must be >= 1, got {num_samples}")
        self.num_samples = math.ceil(total / num_replicas)       # per rank
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
        return iter(indices[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def weighted_sampler(weights: Tensor, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> Sampler[int]:
    """The sampler for ``weights`` (N,): ``WeightedRandomSampler`` (N draws with replacement, seeded) in one
    process, :class:`DistributedWeightedSampler` when ``num_replicas > 1``."""
    if num_replicas > 1:
        return DistributedWeightedSampler(weights, num_replicas=num_replicas, rank=rank, seed=seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=g)
