"""Audio reading: soundfile decode, downmix to mono, resample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from dass_distill.errors import UserError


class AudioError(UserError):
    """A clip that cannot be used: missing, unreadable or empty."""


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Return a mono float32 waveform of ``path`` at ``sample_rate`` as a 1-D tensor."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio has no samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not torch.isfinite(wave).all():
        raise AudioError(f"{path}: audio contains NaN or inf samples")
    return resample(wave, sr, sample_rate)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (no-op when the rates agree)."""
    if orig_rate == new_rate:
        return wave
    g = np.gcd(orig_rate, new_rate)
    return AF.resample(wave, orig_rate // g, new_rate // g)


def fix_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Zero-pad or cut the last axis to ``num_samples``."""
    n = wave.shape[-1]
    if n >= num_samples:
        return wave[..., :num_samples]
    return torch.nn.functional.pad(wave, (0, num_samples - n))

