"""The teacher interface the cache and the training loop rely on."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn


class CheckpointError(Exception):
    """A teacher checkpoint that cannot be loaded; the message names teacher, file and key."""


class Teacher(nn.Module, ABC):
    """A frozen audio tagger: raw waveforms in, raw (pre-sigmoid) logits out.

    Subclasses own their front end, so callers only decode and resample audio to
    ``sample_rate``; features are computed on the teacher's device.
    """

    kind: str = "teacher"

    def __init__(self, name: str, sample_rate: int, label_ids: list[str], label_names: list[str]) -> None:
        super().__init__()
        self.name = name
        self.sample_rate = sample_rate
        self.label_ids = list(label_ids)
        self.label_names = list(label_names)
        self.checkpoint: str | None = None
        self.checkpoint_sha256: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.label_ids)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abstractmethod
    def front_end_params(self) -> dict:
        """Every parameter of the front end, recorded in the cache's provenance."""

    @abstractmethod
    def logits(self, waveforms: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """B mono waveforms at ``sample_rate`` ((B, samples), or a list of any lengths)
        -> (B, num_classes) raw logits."""

    def identity(self) -> dict:
        """Stable description of this teacher: what the cache stores as provenance."""
        return {
            "name": self.name,
            "kind": self.kind,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "sample_rate": self.sample_rate,
            "num_classes": self.num_classes,
            "front_end": self.front_end_params(),
        }


def sha256_of(paths: list[Path]) -> str:
    """sha256 over the bytes of the given files, in order (the weights' fingerprint)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
