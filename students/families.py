"""The student families and their named models, registered in the toolkit's model registry.

A new family is one module (its nn.Module and config dataclass) and one entry here: the
family (how it is built, exported, and initialised from released weights) and its named
configurations, as timm registers models with ``@register_model``.
"""

from __future__ import annotations

from dass_distill.registry import ModelFamily, register_alias, register_family, register_model

from . import hub
from .cnn import CNNBaseline, CNNConfig
from .convert_dass import init_dass_from_released, load_dass_weights
from .dass import DASS, DassConfig

DASS_FAMILY = register_family(ModelFamily(
    name="dass", model_type="dass", description="student (DASS, VMamba-style 2D selective scan)",
    config_class=DassConfig, model_class=DASS,
    save_folder=hub.save_pretrained, load_folder=hub.load_folder,
    load_weights=lambda model, path, allow_pickle=False: load_dass_weights(model, path, allow_pickle),
    init_from_released=init_dass_from_released, graph_export=True, any_length=True,
))

CNN_FAMILY = register_family(ModelFamily(
    name="cnn", model_type="cnn_baseline", description="baseline (plain CNN, for comparisons)",
    config_class=CNNConfig, model_class=CNNBaseline, student=False,
    save_folder=hub.save_pretrained, load_folder=hub.load_folder, graph_export=False, any_length=True,
))


@register_model(DASS_FAMILY)
def dass_tiny() -> DassConfig:
    """A few-hundred-thousand-parameter DASS for tests and the CPU demo."""
    return DassConfig(depths=[1, 1, 2, 1], dims=[24, 48, 96, 192], drop_path_rate=0.1)


@register_model(DASS_FAMILY)
def dass_small() -> DassConfig:
    """DASS-small: VMamba-T[s1l8] layout, ~29.9M parameters."""
    return DassConfig(depths=[2, 2, 8, 2], dims=[96, 192, 384, 768], drop_path_rate=0.2)


@register_model(DASS_FAMILY)
def dass_medium() -> DassConfig:
    """DASS-medium: VMamba-S[s1l20] layout, ~48.6M parameters."""
    return DassConfig(depths=[2, 2, 20, 2], dims=[96, 192, 384, 768], drop_path_rate=0.3)


@register_model(CNN_FAMILY)
def cnn_baseline() -> CNNConfig:
    """Four Conv-BN-ReLU-pool blocks (16-128 channels, ~99k parameters): the recipes' yardstick."""
    return CNNConfig()


register_alias("dass", "dass_small")
