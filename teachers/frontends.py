"""Teacher front ends: waveform batches -> the feature tensors each teacher expects."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torchaudio.compliance.kaldi as kaldi


@dataclass(frozen=True)
class KaldiFbank:
    """The AST front end: Kaldi-compatible 128-bin log-mel fbank, padded/cut, normalised.

    Matches the original AST dataloader: mean-removed waveform, Hanning window,
    HTK-compatible mel, no dither, 10 ms hop; zero-padding to ``target_length``
    frames happens before normalisation ``(x - mean) / (2 * std)``.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    frame_shift: float = 10.0
    frame_length: float = 25.0
    mean: float = -4.2677393
    std: float = 4.5689974

    def params(self) -> dict:
        return {"type": "kaldi_fbank", **asdict(self)}

    @property
    def window_samples(self) -> int:
        """Samples that give exactly ``target_length`` frames (the teacher's window)."""
        hop, win = (round(self.sample_rate * ms / 1000) for ms in (self.frame_shift, self.frame_length))
        return (self.target_length - 1) * hop + win

    def centre_frequencies(self) -> torch.Tensor:
        """(num_mel_bins,) centre of each mel bin in Hz, float32, as ``kaldi.fbank`` builds its bank.

        A pure function of the parameters (fbank's defaults: low 20 Hz, high = Nyquist, window
        rounded up to a power of two, no VTLN), so any code computing it gets the same floats.
        """
        window = int(self.sample_rate * self.frame_length * 0.001)  # kaldi's window_size
        padded = 1 << (window - 1).bit_length()                      # round_to_power_of_two: 400 -> 512
        _, centres = kaldi.get_mel_banks(self.num_mel_bins, padded, float(self.sample_rate), 20.0, 0.0,
                                         100.0, -500.0, 1.0)
        return centres.reshape(-1)

    def one(self, wave: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (target_length, num_mel_bins)."""
        wave = wave.float().reshape(1, -1)
        min_samples = int(self.sample_rate * self.frame_length / 1000)
        if wave.shape[1] < min_samples:  # kaldi.fbank needs one full window
            wave = torch.nn.functional.pad(wave, (0, min_samples - wave.shape[1]))
        feats = kaldi.fbank(
            wave - wave.mean(),
            htk_compat=True,
            sample_frequency=self.sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=self.num_mel_bins,
            dither=0.0,
            frame_shift=self.frame_shift,
            frame_length=self.frame_length,
        )
        n = feats.shape[0]
        if n < self.target_length:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, self.target_length - n))
        feats = feats[: self.target_length]
        return (feats - self.mean) / (2 * self.std)

    def __call__(self, waves: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, samples) or B waveforms of any lengths -> (B, target_length, num_mel_bins)."""
        return torch.stack([self.one(w) for w in waves])
