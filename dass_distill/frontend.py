"""The one Kaldi filterbank front end, and where windows go over long audio.

AST, SSLAM, DASS and every 16 kHz student share this front end (as transformers shares
one feature extractor between models with the same input): the cached views that the
teacher saw are replayed bit for bit on the student's side because both sides run this
same code. This module imports nothing of the toolkit, so teachers, students and the
glue all use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torchaudio.compliance.kaldi as kaldi

PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class KaldiFbank:
    """Kaldi-compatible log-mel filterbank, padded or cut, normalised (the AST/DASS front end).

    Matches the original AST dataloader: mean-removed waveform, Hanning window,
    HTK-compatible mel, no dither, 10 ms hop; zero-padding to ``target_length`` frames
    happens before the normalisation ``(x - mean) / (2 * std)``.
    """

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    frame_shift: float = 10.0
    frame_length: float = 25.0
    mean: float = -4.2677393
    std: float = 4.5689974

    # ------------------------------------------------------------------ features
    def fbank(self, wave: torch.Tensor) -> torch.Tensor:
        """Unnormalised (frames, num_mel_bins) log-mel filterbank of a 1-D waveform."""
        wave = wave.float().reshape(1, -1)
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

    def one(self, wave: torch.Tensor, pad_to_target: bool = True) -> torch.Tensor:
        """(samples,) -> (target_length, num_mel_bins). Short clips are zero-padded to
        ``target_length`` frames; long clips are cut to it, or kept whole with
        ``pad_to_target=False`` (for models that take any length)."""
        feats = self.fbank(wave)
        n = feats.shape[0]
        if n < self.target_length:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, self.target_length - n))
        elif pad_to_target:
            feats = feats[: self.target_length]
        return (feats - self.mean) / (2 * self.std)

    def __call__(self, waves: torch.Tensor | Sequence[torch.Tensor], pad_to_target: bool = True) -> torch.Tensor:
        """A 1-D waveform -> (T, F); a (B, samples) tensor or a list of waveforms -> (B, T, F)."""
        if isinstance(waves, torch.Tensor) and waves.dim() == 1:
            return self.one(waves, pad_to_target)
        return torch.stack([self.one(w, pad_to_target) for w in waves])

    # ------------------------------------------------------------------ geometry
    @property
    def window_samples(self) -> int:
        """Samples that give exactly ``target_length`` frames (a fixed-length model's window)."""
        hop, win = (round(self.sampling_rate * ms / 1000) for ms in (self.frame_shift, self.frame_length))
        return (self.target_length - 1) * hop + win

    def centre_frequencies(self) -> torch.Tensor:
        """(num_mel_bins,) centre of each mel bin in Hz, float32, as ``kaldi.fbank`` builds its bank.

        A pure function of the parameters (fbank's defaults: low 20 Hz, high = Nyquist, window
        rounded up to a power of two, no VTLN), so any code computing it gets the same floats.
        """
        window = int(self.sampling_rate * self.frame_length * 0.001)  # kaldi's window_size
        padded = 1 << (window - 1).bit_length()                        # round_to_power_of_two: 400 -> 512
        _, centres = kaldi.get_mel_banks(self.num_mel_bins, padded, float(self.sampling_rate), 20.0, 0.0,
                                         100.0, -500.0, 1.0)
        return centres.reshape(-1)

    # ------------------------------------------------------------------ serialisation
    def params(self) -> dict:
        """What a cache's provenance records about this front end."""
        return {"type": "kaldi_fbank", **asdict(self)}

    def to_dict(self) -> dict:
        return {"feature_extractor_type": "KaldiFbank", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "KaldiFbank":
        """From ``to_dict`` output; folders written before the front ends were merged used the same
        keys (``DassFeatureExtractor``), unknown keys are ignored."""
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder, PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "KaldiFbank":
        return cls.from_dict(json.loads(Path(folder, PREPROCESSOR_CONFIG).read_text()))


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of windows of ``window`` samples every ``hop`` samples that cover a
    recording of ``num_samples``; the last window ends at the end (one window when it fits)."""
    if num_samples <= window:
        return [0]
    n = math.ceil((num_samples - window) / hop) + 1
    return [min(i * hop, num_samples - window) for i in range(n)]
