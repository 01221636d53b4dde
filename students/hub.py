"""Hugging Face-style model folders for every student family: config.json (``model_type``,
the family's config, labels) + model.safetensors + preprocessor_config.json, and the
self-contained transformers code (``transformers_code``) that lets transformers load the
folder with ``trust_remote_code=True``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from dass_distill.errors import UserError
from dass_distill.frontend import PREPROCESSOR_CONFIG, KaldiFbank
from dass_distill.registry import family_for_model_type, family_of

from . import transformers_code

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Version of the folder layout (config.json keys, weight names). Bumped when a change
# would make an older reader misread a folder; readers refuse newer versions.
FORMAT_VERSION = 1
FORMAT_KEY = "dass_distill_format"


class ModelFolderError(UserError):
    """A folder that is not a loadable model export."""


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    feature_extractor: KaldiFbank,
    label_ids: list[str],
    label_names: list[str],
    extra: dict | None = None,
) -> Path:
    """Write ``config.json`` (family, architecture and labels), weights and the preprocessor config."""
    family = family_of(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(label_names) != model.config.num_classes:
        raise ValueError(f"{len(label_names)} labels for a model with {model.config.num_classes} outputs")
    config = {
        "model_type": family.model_type,
        "architectures": [type(model).__name__],
        FORMAT_KEY: FORMAT_VERSION,
        **model.config.to_dict(),
        "id2label": {str(i): n for i, n in enumerate(label_names)},
        "label2id": {n: i for i, n in enumerate(label_names)},
        "label_ids": list(label_ids),
        # Scores are per-class sigmoids: transformers' audio-classification pipeline reads this.
        "problem_type": "multi_label_classification",
        **(extra or {}),
    }
    if family.model_type in transformers_code.CLASSES:
        config["auto_map"] = transformers_code.auto_map(family.model_type)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    feature_extractor.save_pretrained(folder)
    if family.model_type in transformers_code.CLASSES:
        write_transformers_code(folder)
    return folder


def write_transformers_code(folder: Path) -> None:
    """Copy the remote-code files into ``folder`` and point its preprocessor config at them."""
    for name in transformers_code.CODE_FILES:
        shutil.copyfile(transformers_code.CODE_DIR / name, folder / name)
    path = folder / PREPROCESSOR_CONFIG
    config = json.loads(path.read_text())
    config["auto_map"] = transformers_code.feature_extractor_auto_map()
    path.write_text(json.dumps(config, indent=2) + "\n")


def load_config(folder: str | Path) -> dict:
    """config.json of an exported student folder, checked for model type and format version."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not an exported model folder (no {CONFIG_NAME}); run 'dass-distill export'")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path} is not a model config (expected a JSON object); re-export the model")
    try:
        family = family_for_model_type(config.get("model_type"), folder)
    except UserError as e:
        raise ModelFolderError(str(e)) from None
    if family.save_folder is not save_pretrained:
        raise ModelFolderError(f"{folder} holds a '{family.model_type}' model, not a student folder")
    version = config.get(FORMAT_KEY, 1)  # folders written before the key existed are version 1
    if not isinstance(version, int) or version > FORMAT_VERSION:
        made_by = config.get("dass_distill_version", "a newer version")
        raise ModelFolderError(f"{folder} was exported by dass-distill {made_by} in folder format {version}; this "
                               f"version reads format {FORMAT_VERSION} and older: upgrade dass-distill")
    return config


def from_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, KaldiFbank, dict]:
    """Load (model in eval mode, feature extractor, config dict) from an exported folder."""
    folder = Path(folder)
    config = load_config(folder)
    family = family_for_model_type(config["model_type"], folder)
    model = family.model_class(family.config_class.from_dict(config))
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelFolderError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ModelFolderError(f"{folder / WEIGHTS_NAME} cannot be read ({str(e).strip()[:160]}); re-export the model") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ModelFolderError(f"{folder / WEIGHTS_NAME} does not match config.json "
                               f"({str(e).strip().splitlines()[-1].strip()[:200]})") from None
    if missing or unexpected:
        raise ModelFolderError(f"{folder / WEIGHTS_NAME} does not match config.json: first offending key "
                               f"{(missing or unexpected)[0]}")
    return model.eval(), load_feature_extractor(folder), config


def load_folder(folder: str | Path) -> tuple[nn.Module, KaldiFbank, list[str], list[str], dict]:
    """(model, front end, label ids, label names, config) of an exported student folder."""
    model, fe, config = from_pretrained(folder)
    names = [config["id2label"][str(i)] for i in range(model.config.num_classes)]
    return model, fe, list(config.get("label_ids", names)), names, config


def load_feature_extractor(folder: str | Path) -> KaldiFbank:
    """The front end of an exported folder (``preprocessor_config.json``)."""
    folder = Path(folder)
    if not (folder / PREPROCESSOR_CONFIG).is_file():
        raise ModelFolderError(f"{folder} has no {PREPROCESSOR_CONFIG} (the front end's settings); re-export the model")
    try:
        return KaldiFbank.from_pretrained(folder)
    except (ValueError, TypeError) as e:
        raise ModelFolderError(f"{folder / PREPROCESSOR_CONFIG} is not a valid front-end config ({e}); "
                               f"re-export the model") from None
