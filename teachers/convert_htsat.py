"""HTS-AT's checkpoint layouts. The released one: a PyTorch Lightning ``.ckpt`` whose ``state_dict``
keys carry ``SEDWrapper``'s ``sed_model.`` prefix; this module holds the key prefixes and derived
buffers a loader deals with, the writer of that layout (``save_htsat_checkpoint``) and the check
that stored front-end matrices are the config's (``_front_end_mismatch``). And the Hugging Face-style
folder of an HTS-AT trained here on the Kaldi filterbank (``save_htsat_folder`` /
``load_htsat_folder``): config.json (``model_type: htsat``, the config, the labels),
model.safetensors and preprocessor_config.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dass_distill.checkpoint_files import CheckpointError, load_strict, read_checkpoint
from dass_distill.frontend import PREPROCESSOR_CONFIG, KaldiFbank

from .configuration_htsat import MEL, STFT_IMAG, STFT_REAL, HTSATConfig
from .modeling_htsat import HTSATFbankClassifier, HTSATModel, mel_matrix, stft_matrices

if TYPE_CHECKING:
    from .htsat import HTSATTeacher

#: buffers computed from the architecture (stored in checkpoints, checked on load)
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")

#: prefixes removed from checkpoint keys: Lightning's ``SEDWrapper.sed_model`` and DataParallel's ``module``
PREFIXES = ("module.", "sed_model.")


def model_of(teacher_or_model: "HTSATTeacher | HTSATModel") -> HTSATModel:
    from .htsat import HTSATTeacher  # imported here: htsat.py imports this module

    return teacher_or_model.model if isinstance(teacher_or_model, HTSATTeacher) else teacher_or_model


def save_htsat_checkpoint(teacher_or_model: "HTSATTeacher | HTSATModel", path: str | Path) -> Path:
    """Write the released Lightning layout (``state_dict`` with ``sed_model.`` keys); loadable with
    ``torch.load(weights_only=True)``."""
    model = model_of(teacher_or_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"sed_model." + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.5.9"}, path)
    return path


def _front_end_mismatch(model: HTSATModel) -> str | None:
    """Which stored front-end matrix differs from the config's formula (other rate, window, mel range)."""
    real, imag = stft_matrices(model.config.n_fft)
    stft = model.spectrogram_extractor.stft
    checks = ((STFT_REAL, stft.conv_real.weight, real), (STFT_IMAG, stft.conv_imag.weight, imag),
              (MEL, model.logmel_extractor.melW, mel_matrix(model.config)))
    for key, stored, expected in checks:
        stored = stored.detach().float().cpu()
        if (stored - expected).abs().max() > 1e-3 * expected.abs().max():
            return key
    return None


# ---------------------------------------------------------------- folders of HTS-AT trained on the filterbank

MODEL_TYPE = "htsat"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_htsat_folder(model: HTSATFbankClassifier, folder: str | Path, front_end: KaldiFbank, label_ids: list[str],
                      label_names: list[str], extra: dict | None = None) -> Path:
    """Write config.json, model.safetensors and the front end's preprocessor_config.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if len(label_names) != model.config.num_classes:
        raise ValueError(f"{len(label_names)} labels for a model with {model.config.num_classes} outputs")
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": MODEL_TYPE, "architectures": [type(model).__name__], **asdict(model.config),
        "id2label": {str(i): n for i, n in enumerate(label_names)},
        "label2id": {n: i for i, n in enumerate(label_names)},
        "label_ids": list(label_ids), "problem_type": "multi_label_classification", **(extra or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE),
              metadata={"format": "pt"})
    front_end.save_pretrained(folder)
    return folder


def load_htsat_folder(folder: str | Path) -> tuple[HTSATFbankClassifier, KaldiFbank, list[str], list[str], dict]:
    """(model in eval mode, front end, label ids, label names, config dict) of a folder
    ``save_htsat_folder`` wrote."""
    folder = Path(folder)
    owner = "htsat teacher"
    for name in (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{owner}: {folder} has no {name}; pass an HTS-AT folder written by "
                                  f"'dass-distill export' or a released HTS-AT .ckpt")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{owner}: {folder / CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{owner}: {folder} holds a '{kind}' model, not an HTS-AT")
    fields = {k: config[k] for k in HTSATConfig.__dataclass_fields__ if k in config}
    try:
        model = HTSATFbankClassifier(HTSATConfig(**fields))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{owner}: {folder / CONFIG_FILE} is not a valid HTS-AT config ({e})") from None
    load_strict(model, read_checkpoint(folder / WEIGHTS_FILE, owner), owner, folder / WEIGHTS_FILE)
    try:
        front_end = KaldiFbank.from_pretrained(folder)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{owner}: {folder / PREPROCESSOR_CONFIG} is not a valid front-end config "
                              f"({e})") from None
    if front_end.num_mel_bins != model.config.mel_bins:
        raise CheckpointError(f"{owner}: {folder} front end has {front_end.num_mel_bins} mel bins but the model "
                              f"takes {model.config.mel_bins}; re-export the model")
    names = [config.get("id2label", {}).get(str(i), f"class_{i}") for i in range(model.config.num_classes)]
    return model.eval(), front_end, list(config.get("label_ids", names)), names, config
