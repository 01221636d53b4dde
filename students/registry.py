"""Named student configurations: ``create_model("dass_small", num_classes=10)``."""

from __future__ import annotations

from typing import Callable

from .dass import DASS, DassConfig

_MODELS: dict[str, Callable[..., DassConfig]] = {}


def register_model(fn: Callable[..., DassConfig]) -> Callable[..., DassConfig]:
    """Register a function returning the named model's config (timm style)."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_config(name: str, **overrides) -> DassConfig:
    """The config of a registered model with keyword overrides applied."""
    if name not in _MODELS:
        raise KeyError(f"unknown student model '{name}'; known: {', '.join(list_models())}")
    cfg = _MODELS[name]()
    unknown = set(overrides) - set(DassConfig.__dataclass_fields__)
    if unknown:
        raise KeyError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def create_model(name: str, **overrides) -> DASS:
    return DASS(model_config(name, **overrides))


@register_model
def dass_tiny() -> DassConfig:
    """A few-hundred-thousand-parameter DASS for tests and the CPU demo."""
    return DassConfig(depths=[1, 1, 2, 1], dims=[24, 48, 96, 192], drop_path_rate=0.1)


@register_model
def dass_small() -> DassConfig:
    """DASS-small: VMamba-T[s1l8] layout, ~29.9M parameters."""
    return DassConfig(depths=[2, 2, 8, 2], dims=[96, 192, 384, 768], drop_path_rate=0.2)


@register_model
def dass_medium() -> DassConfig:
    """DASS-medium: VMamba-S[s1l20] layout, ~48.6M parameters."""
    return DassConfig(depths=[2, 2, 20, 2], dims=[96, 192, 384, 768], drop_path_rate=0.3)
