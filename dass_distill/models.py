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
from dass_distill.errors import UserError
from dass_distill.students import DassFeatureExtractor, create_model, list_models
from dass_distill.students.cnn import CNNBaseline, CNNConfig
from dass_distill.teachers import AST_CONFIGS, ASTClassifier, KaldiFbank, ast_config
from dass_distill.teachers.sslam import SSLAMClassifier, SSLAMConfig
from dass_distill.teachers.sslam import front_end_for as sslam_front_end

#: Trainable SSLAM (EAT ViT) sizes: a second teacher kind to train on your own labels
#: (an ensemble of different kinds, e.g. AST + SSLAM). The released model is ViT-B.
SSLAM_CONFIGS: dict[str, dict] = {"sslam_tiny": dict(embed_dim=96, depth=3, num_heads=3)}


@dataclass
class TrainableModel:
    """A model, its per-clip front end and what export needs to rebuild it."""

    name: str
    family: str  # "dass", "ast", "sslam" or "cnn" (the baseline)
    module: nn.Module
    featurize: Callable[[torch.Tensor], torch.Tensor]  # (samples,) -> (T, F)
    sample_rate: int
    target_length: int


# Family names accepted where a model name is expected (``train --model ast``).
ALIASES = {"ast": "ast_base", "dass": "dass_small"}
#: The plain CNN every recipe is compared against (benchmarks/bench_recipes.py).
BASELINES = ("cnn_baseline",)


def model_names() -> list[str]:
    return list_models() + list(AST_CONFIGS) + list(SSLAM_CONFIGS) + list(BASELINES) + list(ALIASES)


def sslam_classifier(name: str, num_classes: int, target_length: int = 1024, **overrides) -> SSLAMClassifier:
    """A freshly initialised SSLAM (EAT) classifier of a named size."""
    fields = set(SSLAMConfig.__dataclass_fields__) - {"num_classes", "target_length"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"{name} has no option '{unknown[0]}'; valid: {', '.join(sorted(fields))}")
    try:
        config = SSLAMConfig(**{**SSLAM_CONFIGS[name], **overrides, "num_classes": num_classes,
                                "target_length": target_length})
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None
    return SSLAMClassifier(config).init_weights()


def cnn_baseline(num_classes: int, **overrides) -> CNNBaseline:
    unknown = sorted(set(overrides) - set(CNNConfig.__dataclass_fields__) - {"num_classes"})
    if unknown:
        raise UserError(f"cnn_baseline has no option '{unknown[0]}'; valid: "
                        f"{', '.join(k for k in CNNConfig.__dataclass_fields__ if k != 'num_classes')}")
    return CNNBaseline(CNNConfig(**{**overrides, "num_classes": num_classes}))


def build_model(name: str, label_map: LabelMap, target_length: int = 1024, **overrides) -> TrainableModel:
    """Build a freshly initialised model with ``len(label_map)`` outputs."""
    name = ALIASES.get(name, name)
    if name in AST_CONFIGS:
        cfg = ast_config(name, len(label_map), target_length, list(label_map.ids), list(label_map.names), **overrides)
        fe = KaldiFbank(target_length=target_length)
        return TrainableModel(name, "ast", ASTClassifier.from_config(cfg), fe.one, fe.sample_rate, target_length)
    if name in SSLAM_CONFIGS:
        module = sslam_classifier(name, len(label_map), target_length, **overrides)
        fe = sslam_front_end(module.config)
        return TrainableModel(name, "sslam", module, fe.one, fe.sample_rate, target_length)
    if name in list_models() or name in BASELINES:
        if name in BASELINES:
            module, family = cnn_baseline(len(label_map), **overrides), "cnn"
        else:
            module, family = create_model(name, num_classes=len(label_map), **overrides), "dass"
        fe = DassFeatureExtractor(target_length=target_length)
        return TrainableModel(name, family, module, fe, fe.sampling_rate, target_length)
    raise KeyError(f"unknown model '{name}'; known: {', '.join(model_names())}")


def parameter_count(name: str, num_classes: int = 527) -> int:
    """Parameters of a named model with ``num_classes`` outputs."""
    if name in AST_CONFIGS:
        module = ASTClassifier.from_config(ast_config(name, num_classes))
    elif name in BASELINES:
        module = cnn_baseline(num_classes)
    elif name in SSLAM_CONFIGS:
        module = sslam_classifier(name, num_classes)
    else:
        module = create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in module.parameters())
