"""Augmented views with exact replay: drawn once when caching, stored as explicit parameters.

A view of a clip is: waveform mixup with a partner clip (weight ``lam`` for the clip
itself), a circular time shift in 10 ms frames, a gain, a cut to the student's window,
then (on the features) one SpecAugment frequency mask and one time mask. The cache
stores these parameters per view (``logit_cache.format.VIEW_PARAMS_DTYPE``); the teacher
saw :func:`render_view` of them when its logits were cached, and the student's data
pipeline calls the same function with the same parameters, so both see the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from dass_distill.data.audio import fix_length
from dass_distill.logit_cache.format import VIEW_PARAMS_DTYPE
from dass_distill.frontend import KaldiFbank
from dass_distill.teachers import SpecMask

#: Frames are 10 ms everywhere (the student's fbank and every teacher's front end).
FRAME_SECONDS = 0.01
#: The analysis window of the student's fbank, for the view length.
FRAME_LENGTH_SECONDS = 0.025


@dataclass(frozen=True)
class ViewSpec:
    """How views are drawn. Stored in the cache (``/views`` attribute ``augment``).

    Defaults follow the DASS recipe: mixup on half the views with lambda ~ Beta(10, 10),
    SpecAugment frequency 48 / time 192; no shift and no gain unless asked for.
    """

    count: int = 10
    seed: int = 0
    mixup: float = 0.5
    mixup_alpha: float = 10.0
    freq_mask: int = 48
    time_mask: int = 192
    max_shift_frames: int = 0
    max_gain_db: float = 0.0
    target_frames: int = 1024  # the student's input length: time masks fall inside it
    num_mel_bins: int = 128  # the student's frequency grid (Kaldi fbank at 16 kHz)

    def __post_init__(self) -> None:
        checks = [
            (self.count >= 1, "views must be at least 1"),
            (0.0 <= self.mixup <= 1.0, "view mixup probability must be in [0, 1]"),
            (self.mixup_alpha > 0, "view mixup alpha must be positive"),
            (0 <= self.freq_mask <= min(self.num_mel_bins, 255), "view freq_mask must be in [0, min(mel bins, 255)]"),
            (0 <= self.time_mask <= min(self.target_frames, 65535), "view time_mask must be in [0, target_frames]"),
            (0 <= self.max_shift_frames <= 32767, "view max_shift_frames must be in [0, 32767]"),
            (0.0 <= self.max_gain_db <= 60.0, "view max_gain_db must be in [0, 60]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def to_dict(self) -> dict:
        return {"type": "dass-distill views", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "ViewSpec":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def view_seconds(self) -> float:
        """Length of a view: exactly the audio behind ``target_frames`` frames."""
        return (self.target_frames - 1) * FRAME_SECONDS + FRAME_LENGTH_SECONDS


def draw_views(spec: ViewSpec, row: int, num_clips: int) -> np.ndarray:
    """The ``spec.count`` views of the clip at ``row``: a (count,) ``VIEW_PARAMS_DTYPE`` array.

    Drawn from a generator seeded by (seed, row) alone, so any process, shard or rerun
    draws the same views for the same clip.
    """
    rng = np.random.default_rng([spec.seed, row])
    out = np.zeros(spec.count, dtype=VIEW_PARAMS_DTYPE)
    for v in range(spec.count):
        mix = num_clips > 1 and rng.random() < spec.mixup
        partner = int(rng.integers(0, num_clips - 1)) if mix else -1
        if mix and partner >= row:
            partner += 1  # uniform over the other clips
        out[v]["partner"] = partner
        out[v]["lam"] = rng.beta(spec.mixup_alpha, spec.mixup_alpha) if mix else 1.0
        out[v]["shift"] = rng.integers(-spec.max_shift_frames, spec.max_shift_frames + 1)
        out[v]["gain_db"] = rng.uniform(-spec.max_gain_db, spec.max_gain_db) if spec.max_gain_db else 0.0
        fw = int(rng.integers(0, spec.freq_mask)) if spec.freq_mask else 0
        out[v]["freq_width"] = fw
        out[v]["freq_start"] = rng.integers(0, spec.num_mel_bins - fw + 1)
        tw = int(rng.integers(0, spec.time_mask)) if spec.time_mask else 0
        out[v]["time_width"] = tw
        out[v]["time_start"] = rng.integers(0, spec.target_frames - tw + 1)
    return out


def without_mixup(params: np.ndarray) -> np.ndarray:
    """The same views with mixup removed (when a partner's audio cannot be read)."""
    out = params.copy()
    out["partner"] = -1
    out["lam"] = 1.0
    return out


def render_view(wave: torch.Tensor, partner: torch.Tensor | None, params: np.void, sample_rate: int,
                spec: ViewSpec) -> torch.Tensor:
    """One view's waveform: mix, shift, gain, cut to the view length (float32, 1-D).

    ``wave`` and ``partner`` are mono waveforms at ``sample_rate``; the partner is cut or
    zero-padded to the clip's length. Deterministic float32 arithmetic: the teacher (when
    caching) and the student (when training) get the same samples.
    """
    x = wave.reshape(-1).float()
    if int(params["partner"]) >= 0:
        if partner is None:
            raise ValueError("this view mixes in a partner clip; pass its waveform")
        lam = float(params["lam"])
        x = lam * x + (1.0 - lam) * fix_length(partner.reshape(-1).float(), x.numel())
    shift = int(params["shift"]) * round(sample_rate * FRAME_SECONDS)
    if shift:
        x = torch.roll(x, shift)
    gain_db = float(params["gain_db"])
    if gain_db:
        x = x * (10.0 ** (gain_db / 20.0))
    return x[: round(spec.view_seconds() * sample_rate)].contiguous()


@lru_cache(maxsize=8)
def _student_centres(num_mel_bins: int) -> tuple[float, ...]:
    return tuple(KaldiFbank(num_mel_bins=num_mel_bins).centre_frequencies().tolist())


def spec_mask(params: np.void, spec: ViewSpec) -> SpecMask:
    """The view's SpecAugment masks in physical units, for teachers with any front end.

    The frequency band runs from the centre of the first masked bin to the centre of the
    last on the student's grid, so a teacher on that grid masks exactly the same bins.
    """
    fw, tw = int(params["freq_width"]), int(params["time_width"])
    if fw:
        centres = _student_centres(spec.num_mel_bins)
        fs = int(params["freq_start"])
        lo, hi = centres[fs], centres[fs + fw - 1]
    else:
        lo, hi = 0.0, -1.0
    return SpecMask(time_start=int(params["time_start"]), time_width=tw, freq_low_hz=lo, freq_high_hz=hi)


def mask_features(feats: torch.Tensor, params: np.void) -> torch.Tensor:
    """Apply a view's masks to (T, F) student features on the student's grid (masked value 0)."""
    out = feats.clone()
    fs, fw = int(params["freq_start"]), int(params["freq_width"])
    ts, tw = int(params["time_start"]), int(params["time_width"])
    if fw:
        out[:, fs: fs + fw] = 0.0
    if tw:
        out[ts: ts + tw, :] = 0.0
    return out
