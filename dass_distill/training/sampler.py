"""A shuffling sampler that can resume mid-epoch and shards across processes."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Per-epoch permutation from (seed, epoch), sharded by rank, able to skip ahead.

    Each rank takes every ``world_size``-th index of the permutation (padded so all
    ranks get equally many), so a resumed run replays exactly the same order.

    With ``views`` (cached augmented views per clip), items are ``(index, view)`` pairs:
    each epoch draws one view per clip from (seed, epoch), so resuming replays them too.
    """

    def __init__(self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 views: int | None = None) -> None:
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.views = views
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch`` with the first ``skip`` samples of this rank already consumed."""
        self.epoch = epoch
        self.skip = skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        per_rank = -(-self.num_items // self.world_size)
        order += order[: per_rank * self.world_size - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator:
        indices = self._indices()[self.skip:]
        if self.views is None:
            return iter(indices)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_777_777)
        choice = torch.randint(self.views, (self.num_items,), generator=g).tolist()
        return iter([(i, choice[i]) for i in indices])

    def __len__(self) -> int:
        return max(0, -(-self.num_items // self.world_size) - self.skip)
