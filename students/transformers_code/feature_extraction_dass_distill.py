"""The dass-distill front end as a transformers feature extractor (remote code, torch only).

Written into every exported student folder by dass-distill. The Kaldi-compatible log-mel
filterbank of AST / DASS (torchaudio.compliance.kaldi.fbank with the recipe's settings:
mean-removed waveform, per-frame DC removal, pre-emphasis 0.97, Hanning window, 512-point
FFT, HTK mel bank from 20 Hz, power spectrum, log floored at float32 epsilon), computed
with torch ops only, then padded to ``target_length`` frames and normalised as
``(x - mean) / (2 * std)``.

Recordings longer than ``window_seconds`` become windows of that length every
``hop_seconds`` (the last one ending at the end), as ``dass-distill predict`` tags them;
the model max-pools the windows' logits.
"""

import math

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

_EPSILON = torch.finfo(torch.float32).eps


def _mel(freq):
    return 1127.0 * (1.0 + freq / 700.0).log()


def _mel_scalar(freq):
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_banks(num_bins, padded_window, sample_rate, low_freq=20.0):
    """(num_bins, padded_window // 2 + 1) triangular HTK mel filters, as Kaldi builds them."""
    num_fft_bins = padded_window / 2
    nyquist = 0.5 * sample_rate
    fft_bin_width = sample_rate / padded_window
    mel_low, mel_high = _mel_scalar(low_freq), _mel_scalar(nyquist)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    mel = _mel(fft_bin_width * torch.arange(num_fft_bins)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin gets no weight


def window_starts(num_samples, window, hop):
    """Starts of windows of ``window`` samples every ``hop`` covering ``num_samples`` (the last ends at the end)."""
    if num_samples <= window:
        return [0]
    n = math.ceil((num_samples - window) / hop) + 1
    return [min(i * hop, num_samples - window) for i in range(n)]


class DassDistillFeatureExtractor(SequenceFeatureExtractor):
    """Waveform(s) at ``sampling_rate`` -> ``input_values``: (batch, frames, mel bins), or
    (batch, windows, frames, mel bins) when a recording is longer than ``window_seconds``."""

    model_input_names = ["input_values"]

    def __init__(self, sampling_rate=16000, num_mel_bins=128, target_length=1024, frame_shift=10.0,
                 frame_length=25.0, mean=-4.2677393, std=4.5689974, window_seconds=10.0, hop_seconds=5.0,
                 padding_value=0.0, **kwargs):
        super().__init__(feature_size=num_mel_bins, sampling_rate=sampling_rate, padding_value=padding_value,
                         **kwargs)
        self.num_mel_bins = num_mel_bins
        self.target_length = target_length
        self.frame_shift = frame_shift
        self.frame_length = frame_length
        self.mean = mean
        self.std = std
        self.window_seconds = window_seconds
        self.hop_seconds = hop_seconds

    # -- the filterbank
    def fbank(self, wave):
        """Unnormalised (frames, num_mel_bins) log-mel filterbank of a 1-D float waveform."""
        shift = int(self.sampling_rate * self.frame_shift * 0.001)
        size = int(self.sampling_rate * self.frame_length * 0.001)
        padded = 1 << (size - 1).bit_length()
        wave = wave.float().reshape(-1)
        if wave.numel() < size:  # one full window at least
            wave = torch.nn.functional.pad(wave, (0, size - wave.numel()))
        wave = wave - wave.mean()
        frames = wave.unfold(0, size, shift)  # (m, size)
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
        frames = frames - 0.97 * previous
        frames = frames * torch.hann_window(size, periodic=False).unsqueeze(0)
        frames = torch.nn.functional.pad(frames, (0, padded - size))
        power = torch.fft.rfft(frames).abs().pow(2.0)
        energies = torch.mm(power, mel_banks(self.num_mel_bins, padded, self.sampling_rate).T)
        return torch.max(energies, torch.tensor(_EPSILON)).log()

    def features(self, wave):
        """(frames, num_mel_bins) normalised, zero-padded (before normalising) to ``target_length`` frames."""
        feats = self.fbank(wave)
        if feats.shape[0] < self.target_length:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, self.target_length - feats.shape[0]))
        return (feats - self.mean) / (2 * self.std)

    def windows(self, wave):
        """(windows, frames, num_mel_bins): the whole clip as one window, or ``window_seconds`` windows."""
        window = max(1, round(self.window_seconds * self.sampling_rate))
        hop = max(1, round(self.hop_seconds * self.sampling_rate))
        if wave.numel() <= window:
            return self.features(wave).unsqueeze(0)
        return torch.stack([self.features(wave[s:s + window]) for s in window_starts(wave.numel(), window, hop)])

    # -- the transformers interface
    def __call__(self, raw_speech, sampling_rate=None, return_tensors=None, **kwargs):
        """One waveform (1-D array or tensor) or a list of them at ``sampling_rate``.

        Clips of a batch are padded to the longest (with silence's features); a batch with a
        windowed recording repeats each clip's last window up to the most windows (the max over
        windows is unchanged).
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"this model takes audio at {self.sampling_rate} Hz, got {sampling_rate} Hz: resample it "
                             f"first (the audio-classification pipeline does, given {{'array', 'sampling_rate'}})")
        single = (isinstance(raw_speech, (np.ndarray, torch.Tensor)) and raw_speech.ndim == 1) or (
            isinstance(raw_speech, (list, tuple)) and len(raw_speech) > 0 and np.isscalar(raw_speech[0]))
        waves = [raw_speech] if single else list(raw_speech)
        tensors = []
        for w in waves:
            w = w.detach().cpu() if isinstance(w, torch.Tensor) else torch.tensor(np.asarray(w, dtype=np.float32))
            if w.ndim != 1:
                raise ValueError(f"expected mono waveforms (1-D), got shape {tuple(w.shape)}")
            tensors.append(self.windows(w.float()))
        frames = max(t.shape[1] for t in tensors)
        pad = (0.0 - self.mean) / (2 * self.std)  # silence: a zero fbank, normalised
        tensors = [torch.nn.functional.pad(t, (0, 0, 0, frames - t.shape[1]), value=pad) for t in tensors]
        count = max(t.shape[0] for t in tensors)
        if count == 1:
            values = torch.stack([t[0] for t in tensors])
        else:
            values = torch.stack([torch.cat([t, t[-1:].expand(count - t.shape[0], -1, -1)]) for t in tensors])
        return BatchFeature({"input_values": values.numpy()}, tensor_type=return_tensors)
