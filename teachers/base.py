"""The teacher interface the cache and the training loop rely on.

A teacher is a frozen tagger with a fixed input window (AST: 1024 frames, HTS-AT:
10 s, SSLAM: 1024 frames). :meth:`Teacher.window_logits` runs the original model on
clips that fit the window, padded the way the original pads. :meth:`Teacher.logits`
applies the long-clip policy (:class:`ClipPolicy`) on top, so no clip is silently
truncated and whatever was done is part of :meth:`Teacher.identity`.

``window_logits`` also takes one :class:`SpecMask` per waveform: SpecAugment masks in
physical units (10 ms frames, a band in Hz), so every teacher, whatever its front end,
can run on the same augmented view a student later replays.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn as nn

from dass_distill.frontend import KaldiFbank, window_starts


@dataclass(frozen=True)
class ClipPolicy:
    """What a teacher does with clips longer than its window.

    ``windows``: cover the whole clip with windows of the teacher's length, starting
    every ``hop_seconds`` and with the last one ending at the clip's end, run each
    and combine the window logits (``mean`` or ``max``). ``truncate``: keep the
    first window only (what the original training code does). Clips shorter than
    the window are always padded as the original model pads them.
    """

    long: Literal["windows", "truncate"] = "windows"
    hop_seconds: float = 5.0
    aggregate: Literal["mean", "max"] = "mean"

    def __post_init__(self) -> None:
        if self.long not in ("windows", "truncate"):
            raise ValueError(f"long-clip policy must be 'windows' or 'truncate', not '{self.long}'")
        if self.aggregate not in ("mean", "max"):
            raise ValueError(f"window aggregate must be 'mean' or 'max', not '{self.aggregate}'")
        if not self.hop_seconds > 0:
            raise ValueError(f"window hop must be positive, got {self.hop_seconds} s")

    def starts(self, num_samples: int, window: int, sample_rate: int) -> list[int]:
        """Window start offsets (in samples) for a clip of ``num_samples``."""
        if self.long == "truncate":
            return [0]
        return window_starts(num_samples, window, max(1, round(self.hop_seconds * sample_rate)))


@dataclass(frozen=True)
class SpecMask:
    """SpecAugment masks of one view. Time on the 10 ms frame grid, frequency as a band in Hz.

    Frame t starts at sample ``t * hop`` of the view's waveform; the time mask covers frames
    ``[time_start, time_start + time_width)``. The frequency mask covers every feature bin
    whose centre frequency c satisfies ``freq_low_hz <= c <= freq_high_hz``. The defaults
    mask nothing.
    """

    time_start: int = 0          # first masked frame
    time_width: int = 0          # 0 = no time mask
    freq_low_hz: float = 0.0
    freq_high_hz: float = -1.0   # high < low = no frequency mask

    def __post_init__(self) -> None:
        if self.time_start < 0 or self.time_width < 0:
            raise ValueError(f"time mask needs start >= 0 and width >= 0, got {self.time_start}, {self.time_width}")

    @property
    def has_time(self) -> bool:
        return self.time_width > 0

    @property
    def has_freq(self) -> bool:
        return self.freq_high_hz >= self.freq_low_hz


def apply_masks(feats: torch.Tensor, masks: Sequence[SpecMask | None], centres_hz: torch.Tensor) -> torch.Tensor:
    """(B, T, F) features in the model's input space -> a copy with each example's masked
    frames and bins set to 0.0.

    0.0 is the masking value of torchaudio's SpecAugment on the student's normalised fbank
    and of HTS-AT's own SpecAugmentation after bn0. ``centres_hz``: (F,) centre frequency
    of each bin; the band test runs in float64 on the CPU, so a band whose edges are taken
    from the same centres selects exactly the bins between them on any device.
    """
    if len(masks) != feats.shape[0]:
        raise ValueError(f"{len(masks)} masks for a batch of {feats.shape[0]}")
    if centres_hz.numel() != feats.shape[-1]:
        raise ValueError(f"{centres_hz.numel()} centre frequencies for {feats.shape[-1]} feature bins")
    centres = centres_hz.detach().to("cpu", torch.float64).reshape(-1)
    out = feats.clone()
    for i, m in enumerate(masks):
        if m is None:
            continue
        if m.has_time:
            out[i, m.time_start:m.time_start + m.time_width] = 0.0  # slicing clips to T
        if m.has_freq:
            band = (centres >= m.freq_low_hz) & (centres <= m.freq_high_hz)
            out[i, :, band.to(feats.device)] = 0.0
    return out


class Teacher(nn.Module, ABC):
    """A frozen audio tagger: raw waveforms in, raw (pre-sigmoid) logits out.

    Subclasses own their front end, so callers only decode and resample audio to
    ``sample_rate``; features are computed on the teacher's device. ``label_ids`` is
    None when the checkpoint carries no label names (the released checkpoints): the
    outputs are then positional and take the label map of the data they run on.
    """

    kind: str = "teacher"
    #: autocast dtype for the model body on CUDA (front ends always run in fp32)
    cuda_dtype: torch.dtype | None = torch.bfloat16

    def __init__(self, name: str, sample_rate: int, num_classes: int, label_ids: list[str] | None = None,
                 label_names: list[str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.sample_rate = sample_rate
        self._num_classes = num_classes
        self.label_ids = list(label_ids) if label_ids is not None else None
        self.label_names = list(label_names) if label_names is not None else self.label_ids
        self.checkpoint: str | None = None
        self.checkpoint_sha256: str | None = None
        self.clip_policy = ClipPolicy()

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    @abstractmethod
    def window_samples(self) -> int:
        """Length of the model's input window in samples at ``sample_rate``."""

    @abstractmethod
    def front_end_params(self) -> dict:
        """Every parameter of the front end, recorded in the cache's provenance."""

    @abstractmethod
    def window_logits(self, waveforms: Sequence[torch.Tensor],
                      masks: Sequence[SpecMask | None] | None = None) -> torch.Tensor:
        """B mono waveforms no longer than the window -> (B, num_classes) raw logits,
        short ones padded as the original model pads them. ``masks``: one SpecAugment
        mask per waveform (None: unmasked, bit-identical to no ``masks``), applied to the
        normalised features the model receives (see :meth:`mask_features`)."""

    def centre_frequencies(self) -> torch.Tensor:
        """(F,) centre frequency in Hz of each feature bin (what a SpecMask band selects on)."""
        raise NotImplementedError(f"{self.kind} teacher does not support SpecAugment masks")

    def frame_shift_ms(self) -> float:
        """Hop of the feature frames that time masks index, in milliseconds."""
        raise NotImplementedError(f"{self.kind} teacher does not support SpecAugment masks")

    def mask_features(self, feats: torch.Tensor, masks: Sequence[SpecMask | None] | None) -> torch.Tensor:
        """(B, T, F) model-input features with ``masks`` applied; the same tensor when no
        mask is given, so unmasked runs stay bit-identical."""
        if masks is None:
            return feats
        if len(masks) != feats.shape[0]:
            raise ValueError(f"{self.name} teacher: {len(masks)} masks for {feats.shape[0]} waveforms")
        if all(m is None for m in masks):
            return feats
        if any(m is not None and m.has_time for m in masks) and self.frame_shift_ms() != 10.0:
            # SpecMask times are 10 ms frames; another hop would mask a different stretch of audio
            raise ValueError(f"{self.name} teacher: time masks need 10 ms frames, "
                             f"its hop is {self.frame_shift_ms():g} ms")
        return apply_masks(feats, masks, self.centre_frequencies())

    def model_precision(self):
        """Autocast context for the model body: ``cuda_dtype`` on CUDA, nothing elsewhere."""
        dev = self.device
        if dev.type == "cuda" and self.cuda_dtype is not None:
            return torch.autocast("cuda", dtype=self.cuda_dtype)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def logits(self, waveforms: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """B mono waveforms at ``sample_rate`` ((B, samples), or a list of any lengths)
        -> (B, num_classes) raw logits, long clips handled by ``clip_policy``."""
        window = self.window_samples
        pieces: list[torch.Tensor] = []
        owner: list[int] = []
        for i, wave in enumerate(waveforms):
            wave = wave.reshape(-1)
            for start in self.clip_policy.starts(wave.numel(), window, self.sample_rate):
                pieces.append(wave[start:start + window])
                owner.append(i)
        out = self.window_logits([p.to(self.device) for p in pieces]).float()
        if len(pieces) == len(waveforms):
            return out
        index = torch.tensor(owner, device=out.device)
        combined = torch.empty(len(waveforms), out.shape[1], device=out.device)
        for i in range(len(waveforms)):
            rows = out[index == i]
            combined[i] = rows.mean(0) if self.clip_policy.aggregate == "mean" else rows.amax(0)
        return combined

    def identity(self) -> dict:
        """Stable description of this teacher: what the cache stores as provenance."""
        policy = self.clip_policy
        return {
            "name": self.name,
            "kind": self.kind,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "sample_rate": self.sample_rate,
            "num_classes": self.num_classes,
            "labels": "from checkpoint" if self.label_ids is not None else "positional (checkpoint has no label names)",
            "front_end": self.front_end_params(),
            "clips": {
                "window_seconds": self.window_samples / self.sample_rate,
                "long": policy.long,
                "hop_seconds": policy.hop_seconds if policy.long == "windows" else None,
                "aggregate": policy.aggregate if policy.long == "windows" else None,
                "short": self.short_clip_rule(),
            },
        }

    def short_clip_rule(self) -> str:
        """How clips shorter than the window are padded (recorded in provenance)."""
        return "zero-padded to the window"

    def set_clip_policy(self, policy: ClipPolicy) -> "Teacher":
        self.clip_policy = policy
        return self


class FbankTeacher(Teacher):
    """A teacher behind the toolkit's Kaldi filterbank (``self.front_end``, set by the subclass):
    AST, SSLAM and an HTS-AT trained here. Masks act on the normalised filterbank, as the
    originals' SpecAugment."""

    front_end: KaldiFbank

    @property
    def window_samples(self) -> int:
        return self.front_end.window_samples

    def front_end_params(self) -> dict:
        return self.front_end.params()

    def centre_frequencies(self) -> torch.Tensor:
        return self.front_end.centre_frequencies()

    def frame_shift_ms(self) -> float:
        return self.front_end.frame_shift

    @torch.inference_mode()
    def window_logits(self, waveforms: Sequence[torch.Tensor],
                      masks: Sequence[SpecMask | None] | None = None) -> torch.Tensor:
        feats = self.front_end([w.to(self.device) for w in waveforms])  # fp32 front end
        feats = self.mask_features(feats, masks)
        with self.model_precision():
            return self.model(feats).float()


def sha256_of(paths: list[Path]) -> str:
    """sha256 over the bytes of the given files, in order (the weights' fingerprint)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# Keys that give a checkpoint's family away, for "wrong kind" messages.
_SIGNATURES = (
    ("htsat", ("sed_model.", "tscam_conv.")),
    ("sslam", ("modality_encoders.", "_ema")),
    ("ast", ("v.pos_embed", "audio_spectrogram_transformer.", "mlp_head.")),
    ("dass", ("layers.0.blocks.0.op.", "v.patch_embed.0.")),
)


def guess_kind(keys: Sequence[str]) -> str | None:
    """The teacher family a state dict's key names point to, if any."""
    for kind, marks in _SIGNATURES:
        if any(m in k for k in keys for m in marks):
            return kind
    return None


def wrong_kind_hint(keys: Sequence[str], expected: str) -> str:
    kind = guess_kind(keys)
    if kind and kind != expected:
        return f"; it looks like a {kind} checkpoint (load it as {kind}:PATH)"
    return f"; first keys: {', '.join(list(keys)[:3])}"
