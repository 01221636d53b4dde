"""The DASS front end: Kaldi-compatible log-mel filterbank, as in AST and DASS."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchaudio.compliance.kaldi as kaldi

PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass
class DassFeatureExtractor:
    """Waveform (16 kHz mono) -> normalised (T, num_mel_bins) filterbank.

    Clips are zero-padded or cut to ``target_length`` frames before normalising,
    as the DASS/AST recipe does. ``__call__(..., pad_to_target=False)`` keeps every
    frame of a long clip (the student has no positional embedding).
    """

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    frame_shift: float = 10.0
    frame_length: float = 25.0
    mean: float = -4.2677393
    std: float = 4.5689974

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """Unnormalised (T, F) log-mel filterbank of a 1-D waveform."""
        wave = waveform.float().reshape(1, -1)
        min_samples = int(self.sampling_rate * self.frame_length / 1000)
        if wave.shape[1] < min_samples:  # kaldi.fbank needs one full window
            wave = torch.nn.functional.pad(wave, (0, min_samples - wave.shape[1]))
        return kaldi.fbank(
            wave - wave.mean(),
            htk_compat=True,
            sample_frequency=self.sampling_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=self.num_mel_bins,
            dither=0.0,
            frame_shift=self.frame_shift,
            frame_length=self.frame_length,
        )

    def __call__(self, waveform: torch.Tensor, pad_to_target: bool = True) -> torch.Tensor:
        feats = self.fbank(waveform)
        n = feats.shape[0]
        if n < self.target_length:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, self.target_length - n))
        elif pad_to_target and n > self.target_length:
            feats = feats[: self.target_length]
        return (feats - self.mean) / (2 * self.std)

    def to_dict(self) -> dict:
        return {"feature_extractor_type": "DassFeatureExtractor", **asdict(self)}

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder, PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> "DassFeatureExtractor":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "DassFeatureExtractor":
        return cls.from_dict(json.loads(Path(folder, PREPROCESSOR_CONFIG).read_text()))
