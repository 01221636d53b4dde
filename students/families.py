"""The student families and their named models, registered in the toolkit's model registry.

A new family is one module (its nn.Module and config dataclass) and one entry here: the
family (how it is built, exported, and initialised from released weights) and its named
configurations, as timm registers models with ``@register_model``.
"""

from __future__ import annotations

import dataclasses

from dass_distill.registry import ModelFamily, register_alias, register_family, register_model

from . import hub
from .aum import AuM
from .cnn import CNNBaseline, CNNConfig
from .convert_audio_mamba import (init_aum_from_released, init_from_pretraining, init_ssamba_from_released,
                                  load_aum_weights, load_ssamba_weights)
from .convert_dass import init_dass_from_released, load_dass_weights
from .dass import DASS, DassConfig
from .ssamba import SSAMBA
from .ssamba import check_config as check_ssamba_config
from .vim import AudioMambaConfig

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


# --------------------------------------------------------------------------- Audio Mamba
def _audio_mamba_config(defaults: AudioMambaConfig, num_classes: int, target_length: int,
                        overrides: dict) -> AudioMambaConfig:
    return dataclasses.replace(defaults, num_classes=num_classes, target_length=target_length, **overrides)


AUM_FAMILY = register_family(ModelFamily(
    name="aum", model_type="aum", description="student (AuM, bidirectional Mamba over patches)",
    config_class=AudioMambaConfig, model_class=AuM,
    options=("variant", "depth", "embed_dim", "fstride", "tstride", "drop_path_rate", "drop_rate", "d_state"),
    make_config=_audio_mamba_config,
    save_folder=hub.save_pretrained, load_folder=hub.load_folder,
    load_weights=lambda model, path, allow_pickle=False: load_aum_weights(model, path, allow_pickle),
    init_from_released=init_aum_from_released, init_from_pretraining=init_from_pretraining,
    graph_export=True, any_length=True,
))

SSAMBA_FAMILY = register_family(ModelFamily(
    name="ssamba", model_type="ssamba", description="student (SSAMBA, self-supervised audio Mamba)",
    config_class=AudioMambaConfig, model_class=SSAMBA,
    options=("head", "depth", "embed_dim", "fstride", "tstride", "drop_path_rate", "drop_rate", "d_state"),
    make_config=lambda *args: check_ssamba_config(_audio_mamba_config(*args)),
    save_folder=hub.save_pretrained, load_folder=hub.load_folder,
    load_weights=lambda model, path, allow_pickle=False: load_ssamba_weights(model, path, allow_pickle),
    init_from_released=init_ssamba_from_released, init_from_pretraining=init_from_pretraining,
    graph_export=False, any_length=True,
))


def _aum(embed_dim: int, variant: str) -> AudioMambaConfig:
    return AudioMambaConfig(embed_dim=embed_dim, depth=24, variant=variant, head="cls")


@register_model(AUM_FAMILY)
def aum_tiny() -> AudioMambaConfig:
    """AuM-tiny: 24 Bi-Bi layers, 192 wide (~7.0M parameters at 527 classes)."""
    return _aum(192, "bi-bi")


@register_model(AUM_FAMILY)
def aum_small() -> AudioMambaConfig:
    """AuM-small, released Bi-Bi: 24 layers, 384 wide (25.5M parameters at 527 classes)."""
    return _aum(384, "bi-bi")


@register_model(AUM_FAMILY)
def aum_base() -> AudioMambaConfig:
    """AuM-base, released Fo-Bi: 24 layers, 768 wide (92.1M parameters at 527 classes)."""
    return _aum(768, "fo-bi")


def _ssamba(embed_dim: int) -> AudioMambaConfig:
    # Fine-tuning recipe: patches at stride 10 (pretraining used 16), drop path 0.1, mean of the tokens.
    return AudioMambaConfig(embed_dim=embed_dim, depth=24, variant="bi-bi", fstride=10, tstride=10,
                            drop_path_rate=0.1, head="avgtok")


@register_model(SSAMBA_FAMILY)
def ssamba_tiny() -> AudioMambaConfig:
    """SSAMBA-tiny: 12 pairs of Bi-Bi LayerNorm layers, 192 wide, patches at stride 10."""
    return _ssamba(192)


@register_model(SSAMBA_FAMILY)
def ssamba_small() -> AudioMambaConfig:
    """SSAMBA-small: 24 layers, 384 wide, patches at stride 10."""
    return _ssamba(384)


@register_model(SSAMBA_FAMILY)
def ssamba_base() -> AudioMambaConfig:
    """SSAMBA-base: 24 layers, 768 wide, patches at stride 10."""
    return _ssamba(768)


register_alias("aum", "aum_small")
register_alias("ssamba", "ssamba_small")
