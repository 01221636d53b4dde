"""One place that turns a model name into a trainable module and its front end.

Students (``dass_*``) and trainable teachers (``ast_*``) share the training loop:
each is a module mapping a (B, T, F) filterbank to (B, C) logits, plus a per-clip
feature function that turns a 16 kHz waveform into that filterbank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from dass_distill.data.manifest import LabelMap
from dass_distill.students import DassFeatureExtractor, create_model, list_models
from dass_distill.teachers import AST_CONFIGS, ASTClassifier, KaldiFbank, ast_config


@dataclass
class TrainableModel:
    """A model, its per-clip front end and what export needs to rebuild it."""

    name: str
    family: str  # "dass" or "ast"
    module: nn.Module
    featurize: Callable[[torch.Tensor], torch.Tensor]  # (samples,) -> (T, F)
    sample_rate: int
    target_length: int


# Family names accepted where a model name is expected (``train --model ast``).
ALIASES = {"ast": "ast_base", "dass": "dass_small"}


def model_names() -> list[str]:
    return list_models() + list(AST_CONFIGS) + list(ALIASES)


def build_model(name: str, label_map: LabelMap, target_length: int = 1024, **overrides) -> TrainableModel:
    """Build a freshly initialised model with ``len(label_map)`` outputs."""
    name = ALIASES.get(name, name)
    if name in AST_CONFIGS:
        cfg = ast_config(name, len(label_map), target_length, list(label_map.ids), list(label_map.names), **overrides)
        fe = KaldiFbank(target_length=target_length)
        return TrainableModel(name, "ast", ASTClassifier.from_config(cfg), fe.one, fe.sample_rate, target_length)
    if name in list_models():
        module = create_model(name, num_classes=len(label_map), **overrides)
        fe = DassFeatureExtractor(target_length=target_length)
        return TrainableModel(name, "dass", module, fe, fe.sampling_rate, target_length)
    raise KeyError(f"unknown model '{name}'; known: {', '.join(model_names())}")


def parameter_count(name: str, num_classes: int = 527) -> int:
    """Parameters of a named model with ``num_classes`` outputs."""
    if name in AST_CONFIGS:
        module = ASTClassifier.from_config(ast_config(name, num_classes))
    else:
        module = create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in module.parameters())
