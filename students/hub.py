"""Hugging Face-style model folders for students: config.json + model.safetensors +
preprocessor_config.json, loaded back with :func:`from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .dass import DASS, DassConfig
from .feature_extraction import DassFeatureExtractor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "dass"


class ModelFolderError(Exception):
    """A folder that is not a loadable student export."""


def save_pretrained(
    model: DASS,
    folder: str | Path,
    feature_extractor: DassFeatureExtractor,
    label_ids: list[str],
    label_names: list[str],
    extra: dict | None = None,
) -> Path:
    """Write ``config.json`` (architecture and labels), weights and the preprocessor config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(label_names) != model.config.num_classes:
        raise ValueError(f"{len(label_names)} labels for a model with {model.config.num_classes} outputs")
    config = {
        "model_type": MODEL_TYPE,
        "architectures": ["DASS"],
        **model.config.to_dict(),
        "id2label": {str(i): n for i, n in enumerate(label_names)},
        "label2id": {n: i for i, n in enumerate(label_names)},
        "label_ids": list(label_ids),
        **(extra or {}),
    }
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    feature_extractor.save_pretrained(folder)
    return folder


def load_config(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not an exported model folder (no {CONFIG_NAME}); run 'dass-distill export'")
    config = json.loads(path.read_text())
    if config.get("model_type") != MODEL_TYPE:
        raise ModelFolderError(f"{folder} holds a '{config.get('model_type')}' model, not a DASS student")
    return config


def from_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[DASS, DassFeatureExtractor, dict]:
    """Load (model in eval mode, feature extractor, config dict) from an exported folder."""
    folder = Path(folder)
    config = load_config(folder)
    model = DASS(DassConfig.from_dict(config))
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelFolderError(f"{folder} has no {WEIGHTS_NAME}")
    state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFolderError(f"{folder / WEIGHTS_NAME} does not match config.json: first offending key "
                               f"{(missing or unexpected)[0]}")
    return model.eval(), DassFeatureExtractor.from_pretrained(folder), config
