"""The model registry (timm style): every model the toolkit builds, by name.

A *family* (DASS, the CNN baseline, AST, SSLAM, ...) is one :class:`ModelFamily`: its
config class, its module class, its front end, how its folders are written and read,
how a released checkpoint initialises it, and what it supports. A *model* is a named
configuration of a family (``dass_small``), registered with :func:`register_model`.
Adding a family is one module (the nn.Module and its config) plus one registry entry
(``students/families.py`` for students; ``dass_distill/teacher_models.py`` for trainable
teachers); nothing in the training loop, export or inference names a family.

This module imports nothing of the toolkit but its error type and front end, so the
component packages register their families here without depending on the glue.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from dass_distill.errors import UserError
from dass_distill.frontend import KaldiFbank


def _student_front_end(config: Any, target_length: int) -> KaldiFbank:
    return KaldiFbank(target_length=target_length)


@dataclass(frozen=True)
class ModelFamily:
    """What the toolkit needs to know about one family of models.

    ``make_config(defaults, num_classes, target_length, overrides)`` returns the family's
    config (default: the config dataclass with ``num_classes`` and the overrides) and
    ``build(config)`` a fresh module (default: ``model_class(config)``);
    ``front_end(config, target_length)`` the filterbank that feeds it;
    ``save_folder(model, folder, front_end, label_ids, label_names, extra)`` writes a
    Hugging Face-style folder and ``load_folder(folder)`` reads one back as
    ``(model, front_end, label_ids, label_names, config_dict)``;
    ``load_weights(model, path, allow_pickle)`` loads a released checkpoint strictly;
    ``init_from_released(model, path, label_ids, allow_pickle) -> bool`` starts a training
    run from one (True when the head was loaded too, False when it is new);
    ``init_from_pretraining(model, state, source) -> bool`` does the same from the weights of a
    masked-patch pretraining run (``dass-distill pretrain``; None: the family cannot be pretrained),
    whose patches do not overlap: ``stride_options`` are set to the patch size there.
    """

    name: str
    model_type: str  # "model_type" in an exported folder's config.json
    description: str  # one line for `dass-distill models`
    config_class: type
    model_class: type
    student: bool = True  # students are distilled into; the rest are teachers or baselines
    options: tuple[str, ...] | None = None  # overridable config keys (default: the config dataclass's fields)
    make_config: Callable[..., Any] | None = None
    build: Callable[[Any], nn.Module] | None = None  # config -> fresh module (default: model_class(config))
    front_end: Callable[[Any, int], KaldiFbank] = _student_front_end
    save_folder: Callable[..., Path] | None = None
    load_folder: Callable[[Path], tuple] | None = None
    load_weights: Callable[..., nn.Module] | None = None
    init_from_released: Callable[..., bool] | None = None
    init_from_pretraining: Callable[..., bool] | None = None
    stride_options: tuple[str, str] = ("fstride", "tstride")  # the (frequency, time) patch-stride options
    graph_export: bool = False  # ONNX / torch.export capture works (pure-torch path)
    any_length: bool = True  # takes any number of frames (no fixed position table)

    def valid_options(self) -> list[str]:
        names = self.options if self.options is not None else tuple(f.name for f in dataclasses.fields(self.config_class))
        return sorted(n for n in names if n not in ("num_classes", "target_length"))

    def config(self, model: str, defaults: Any, num_classes: int, target_length: int, overrides: dict) -> Any:
        """The config of ``model`` (its registered ``defaults``) with ``overrides``, checked."""
        valid = self.valid_options()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise UserError(f"{model} has no option '{unknown[0]}'; valid options: {', '.join(valid)}")
        try:
            if self.make_config is not None:
                return self.make_config(defaults, num_classes, target_length, overrides)
            return dataclasses.replace(defaults, num_classes=num_classes, **overrides)
        except (TypeError, ValueError) as e:
            raise UserError(f"{model}: {e}") from None


@dataclass
class _Registry:
    families: dict[str, ModelFamily] = field(default_factory=dict)
    models: dict[str, tuple[ModelFamily, Callable[[], Any]]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


_REGISTRY = _Registry()


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family (its ``name`` and ``model_type`` must be new)."""
    for other in _REGISTRY.families.values():
        if family.name == other.name or family.model_type == other.model_type:
            raise ValueError(f"model family '{family.name}' ({family.model_type}) is already registered")
    _REGISTRY.families[family.name] = family
    return family


def register_model(family: ModelFamily) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator: the function's name becomes a model of ``family``; it returns the default config."""
    def add(fn: Callable[[], Any]) -> Callable[[], Any]:
        _REGISTRY.models[fn.__name__] = (family, fn)
        return fn
    return add


def register_alias(alias: str, name: str) -> None:
    """``alias`` names ``name`` on the command line (``--model dass`` for ``dass_small``)."""
    _REGISTRY.aliases[alias] = name


def resolve(name: str) -> str:
    return _REGISTRY.aliases.get(name, name)


def list_models(students_only: bool = False) -> list[str]:
    """Registered model names (sorted)."""
    return sorted(n for n, (fam, _) in _REGISTRY.models.items() if fam.student or not students_only)


def list_aliases() -> dict[str, str]:
    return dict(_REGISTRY.aliases)


def family_of(model: str | nn.Module) -> ModelFamily:
    """The family of a model name or of a built module."""
    if isinstance(model, nn.Module):
        for fam in _REGISTRY.families.values():
            if isinstance(model, fam.model_class):
                return fam
        raise UserError(f"{type(model).__name__} is not a model of any registered family")
    name = resolve(model)
    if name not in _REGISTRY.models:
        raise UserError(f"unknown model '{model}'; known: {', '.join(list_models() + sorted(_REGISTRY.aliases))}")
    return _REGISTRY.models[name][0]


def family_for_model_type(model_type: str | None, where: object = "folder") -> ModelFamily:
    """The family whose exported folders say ``model_type``."""
    for fam in _REGISTRY.families.values():
        if fam.model_type == model_type:
            return fam
    known = ", ".join(sorted(f.model_type for f in _REGISTRY.families.values()))
    raise UserError(f"{where}: unsupported model_type '{model_type}' (known: {known})")


def model_config(name: str, num_classes: int = 527, target_length: int = 1024, **overrides) -> Any:
    """The config of a registered model with overrides applied (unknown keys are one-line errors)."""
    family = family_of(name)
    return family.config(resolve(name), _REGISTRY.models[resolve(name)][1](), num_classes, target_length, overrides)


def create_model(name: str, num_classes: int = 527, target_length: int = 1024, **overrides) -> nn.Module:
    """A freshly initialised model: ``create_model("dass_small", num_classes=10, drop_path_rate=0.1)``."""
    family = family_of(name)
    config = model_config(name, num_classes, target_length, **overrides)
    return family.build(config) if family.build is not None else family.model_class(config)


def load_weights(model: nn.Module, path: str | Path, allow_pickle: bool = False) -> nn.Module:
    """Load a released checkpoint into ``model`` strictly, in its family's original layout(s)."""
    family = family_of(model)
    if family.load_weights is None:
        raise UserError(f"{family.name} models have no released-checkpoint format to load {path} from")
    return family.load_weights(model, Path(path), allow_pickle)
