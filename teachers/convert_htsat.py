"""The released HTS-AT checkpoint layout: a PyTorch Lightning ``.ckpt`` whose ``state_dict`` keys
carry ``SEDWrapper``'s ``sed_model.`` prefix. Holds the key prefixes and derived buffers a loader
deals with, the writer of that layout (``save_htsat_checkpoint``) and the check that stored
front-end matrices are the config's (``_front_end_mismatch``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .configuration_htsat import MEL, STFT_IMAG, STFT_REAL
from .modeling_htsat import HTSATModel, mel_matrix, stft_matrices

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
