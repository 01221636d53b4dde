"""A resumable, shardable sampler that also draws each epoch's views and mixup pairs.

Every random choice of an epoch (order, balanced draws, cached view, mixup partner and
weight) comes from one generator seeded by (seed, epoch), before the ranks take their
share. A resumed run therefore replays exactly the same items, whatever the number of
DataLoader workers, and no augmentation randomness lives in worker processes.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from dass_distill.data.dataset import Sample


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """AST/DASS balanced sampling: a clip's weight is the sum over its labels of 1000 / (label count + 0.01)."""
    counts = targets.sum(axis=0)
    per_label = 1000.0 / (counts + 0.01)
    return (targets * per_label).sum(axis=1)


class ResumableSampler(Sampler[Sample]):
    """Per-epoch order from (seed, epoch), sharded by rank, able to skip ahead.

    ``weights``: draw the epoch's ``num_items`` items with replacement in proportion to
    them (balanced sampling) instead of a permutation. ``views``: pick one of that many
    cached views per item. ``mixup``: with this probability an item is mixed with a
    uniformly drawn partner, weight lambda ~ Beta(mixup_alpha, mixup_alpha) for the item
    itself. Each rank takes every ``world_size``-th item (padded so all ranks get equally
    many).
    """

    def __init__(self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 views: int | None = None, weights: np.ndarray | None = None, mixup: float = 0.0,
                 mixup_alpha: float = 10.0) -> None:
        if weights is not None and (len(weights) != num_items or not np.all(np.asarray(weights) >= 0)
                                    or not np.asarray(weights).sum() > 0):
            raise ValueError("sampling weights must be non-negative, one per item, with a positive sum")
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.views = views
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.mixup = mixup
        self.mixup_alpha = mixup_alpha
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch`` with the first ``skip`` samples of this rank already consumed."""
        self.epoch = epoch
        self.skip = skip

    def epoch_samples(self) -> list[Sample]:
        """Every rank's items of this epoch, before sharding (deterministic in seed and epoch)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.num_items
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        views = torch.randint(self.views, (n,), generator=g).tolist() if self.views else [-1] * n
        partners, lams = [-1] * n, [1.0] * n
        if self.mixup > 0 and n > 1:
            mixed = (torch.rand(n, generator=g) < self.mixup).tolist()
            drawn = torch.randint(n, (n,), generator=g).tolist()
            lam = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(
                self.mixup_alpha, self.mixup_alpha, n).tolist()
            partners = [d if m else -1 for d, m in zip(drawn, mixed)]
            lams = [float(x) if m else 1.0 for x, m in zip(lam, mixed)]
        return [Sample(i, views[k], partners[k], lams[k]) for k, i in enumerate(order)]

    def _indices(self) -> list[Sample]:
        samples = self.epoch_samples()
        per_rank = -(-self.num_items // self.world_size)
        samples += samples[: per_rank * self.world_size - len(samples)]
        return samples[self.rank:: self.world_size]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        return max(0, -(-self.num_items // self.world_size) - self.skip)
