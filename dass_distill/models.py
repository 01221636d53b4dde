"""Every model the toolkit trains, by name: students, trainable teachers and the CNN baseline.

Importing this module registers all families in :mod:`dass_distill.registry`: the
student families (``students/families.py``) and the trainable teachers
(``teacher_models.py``). A trainable model is a module mapping a (B, T, F) filterbank to
(B, C) logits plus the per-clip front end that makes that filterbank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from dass_distill import registry, teacher_models  # noqa: F401  (registers the trainable teachers)
from dass_distill import students  # noqa: F401  (registers the student families)
from dass_distill.data.manifest import LabelMap
from dass_distill.frontend import KaldiFbank
from dass_distill.registry import ModelFamily, create_model, family_of, list_models


@dataclass
class TrainableModel:
    """A model, its family, its per-clip front end and what export needs to rebuild it."""

    name: str
    family: ModelFamily
    module: nn.Module
    front_end: KaldiFbank
    target_length: int

    @property
    def featurize(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """(samples,) -> (target_length, F), as in training."""
        return self.front_end.one

    @property
    def sample_rate(self) -> int:
        return self.front_end.sampling_rate


def model_names() -> list[str]:
    """Every name ``train --model`` accepts."""
    return list_models() + sorted(registry.list_aliases())


def build_model(name: str, label_map: LabelMap, target_length: int = 1024, **overrides) -> TrainableModel:
    """A freshly initialised model with ``len(label_map)`` outputs and its front end."""
    name = registry.resolve(name)
    family = family_of(name)
    module = create_model(name, num_classes=len(label_map), target_length=target_length, **overrides)
    return TrainableModel(name, family, module, family.front_end(module.config, target_length), target_length)


def parameter_count(name: str, num_classes: int = 527) -> int:
    """Parameters of a named model with ``num_classes`` outputs."""
    return sum(p.numel() for p in create_model(name, num_classes=num_classes).parameters())
