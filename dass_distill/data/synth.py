"""Embedded synthetic sound-event dataset: the demo's default data.

Twelve procedural event classes (tones, chirps, noise bursts, click trains, ...),
each drawn with random per-instance pitch, duration, level and timing. A clip mixes
1-3 events of distinct classes at random onsets and levels over low-level white or
pink background noise; its labels are the classes present. Everything is
deterministic from a seed: clip ``i`` of a split gets its own generator from
``SeedSequence(seed, spawn_key=(split, i))``, so it does not depend on how many clips
are made.

Layout written by :func:`make_synthetic_dataset`::

    out_dir/class_labels_indices.csv
    out_dir/audio/train/train_00000.wav ...
    out_dir/audio/eval/eval_00000.wav ...
    out_dir/train.json, out_dir/eval.json      (AST JSON datafiles)
    out_dir/synth_info.json                    (marks the folder as synth output)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import soundfile as sf

from dass_distill.data.manifest import Clip, LabelMap, write_json_manifest
from dass_distill.errors import UserError

SAMPLE_RATE = 16000
MARKER_NAME = "synth_info.json"
_GENERATOR_TAG = "dass_distill.data.synth"
_FORMAT_VERSION = 1
_SPLIT_CODES = {"train": 0, "eval": 1}

EventFn = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class SynthEvent:
    """One placed event: class id and its extent in seconds."""

    mid: str
    onset_s: float
    offset_s: float


class RenderedClip(NamedTuple):
    """A rendered clip: float32 waveform, label ids (label-map order), placed events."""

    waveform: np.ndarray
    labels: list[str]
    events: list[SynthEvent]


# ---------------------------------------------------------------------------
# Building blocks


def _n(seconds: float, sr: int) -> int:
    return max(1, int(round(seconds * sr)))


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _nyq_cap(freq: np.ndarray | float, sr: int) -> np.ndarray | float:
    # keep every partial/sweep below Nyquist so nothing aliases at low sample rates
    return np.minimum(freq, 0.45 * sr)


def _osc(rng: np.random.Generator, freq_hz: np.ndarray, sr: int) -> np.ndarray:
    """Sine from an instantaneous-frequency track; integrating keeps phase continuous."""
    return np.sin(2 * np.pi * np.cumsum(freq_hz) / sr + rng.uniform(0, 2 * np.pi))


def _fade(x: np.ndarray, sr: int, attack_s: float, release_s: float) -> np.ndarray:
    """Raised-cosine attack/release, so event edges don't add broadband clicks."""
    x = x.copy()
    for seconds, sl in ((attack_s, slice(None)), (release_s, slice(None, None, -1))):
        length = min(int(round(seconds * sr)), len(x) // 2)
        if length > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)
            x[sl][:length] *= ramp
    return x


def _random_fade(rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    return _fade(x, sr, rng.uniform(0.005, 0.03), rng.uniform(0.01, 0.05))


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz by masking its spectrum."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec[(f < lo) | (f > hi)] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _pink_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS 1/f noise (spectrum shaped in the frequency domain)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec /= np.sqrt(np.maximum(f, 20.0))
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _pulses(
    rng: np.random.Generator, sr: int, count: int, gap_s: tuple[float, float], pulse: Callable[[], np.ndarray]
) -> np.ndarray:
    """Concatenate ``count`` pulses separated by random silent gaps."""
    parts: list[np.ndarray] = []
    for k in range(count):
        if k:
            parts.append(np.zeros(_n(rng.uniform(*gap_s), sr)))
        parts.append(pulse())
    return np.concatenate(parts)


# ---------------------------------------------------------------------------
# Event classes: one function each, registered in _EVENTS below.


def _tone(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.3, 1.5), sr)
    f = _nyq_cap(_loguniform(rng, 250, 4000), sr)
    return _random_fade(rng, _osc(rng, np.full(n, f), sr), sr)


def _chirp(rng: np.random.Generator, sr: int, rising: bool) -> np.ndarray:
    n = _n(rng.uniform(0.3, 1.2), sr)
    f_lo = _loguniform(rng, 250, 1000)
    f_hi = _nyq_cap(f_lo * rng.uniform(2.5, 6.0), sr)
    # exponential sweep: equal time per octave, like a bird/whistle glide
    track = f_lo * (f_hi / f_lo) ** np.linspace(0, 1, n)
    if not rising:
        track = track[::-1]
    return _random_fade(rng, _osc(rng, track, sr), sr)


def _chirp_up(rng: np.random.Generator, sr: int) -> np.ndarray:
    return _chirp(rng, sr, rising=True)


def _chirp_down(rng: np.random.Generator, sr: int) -> np.ndarray:
    return _chirp(rng, sr, rising=False)


def _noise_low(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.2, 1.2), sr)
    lo = rng.uniform(80, 300)
    hi = lo + rng.uniform(150, 450)
    return _random_fade(rng, _band_noise(rng, n, sr, lo, hi), sr)


def _noise_high(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.2, 1.2), sr)
    lo = min(rng.uniform(2500, 4500), 0.3 * sr)
    hi = _nyq_cap(lo + rng.uniform(1000, 3000), sr)
    return _random_fade(rng, _band_noise(rng, n, sr, lo, hi), sr)


def _click_train(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.4, 1.5), sr)
    rate = rng.uniform(6, 30)
    # slightly jittered intervals: regular enough to hear as a train, not a pure comb
    intervals = rng.uniform(0.9, 1.1, size=int(n / sr * rate) + 2) / rate
    times = np.cumsum(intervals) - intervals[0]
    idx = (times[times * sr < n] * sr).astype(np.int64)
    impulses = np.zeros(n)
    impulses[idx] = rng.uniform(0.6, 1.0, size=len(idx))
    tau = rng.uniform(0.0005, 0.0015)
    decay = np.exp(-np.arange(_n(6 * tau, sr)) / (tau * sr))
    kernel = rng.standard_normal(len(decay)) * decay
    return np.convolve(impulses, kernel)[:n]


def _harmonic(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.3, 1.5), sr)
    f0 = _loguniform(rng, 100, 400)
    k = np.arange(1, rng.integers(4, 11) + 1)
    k = k[k * f0 < 0.45 * sr]
    amps = k ** -rng.uniform(0.5, 1.5)
    phases = rng.uniform(0, 2 * np.pi, size=len(k))
    t = np.arange(n) / sr
    x = (amps[:, None] * np.sin(2 * np.pi * f0 * k[:, None] * t + phases[:, None])).sum(axis=0)
    return _random_fade(rng, x, sr)


def _am_tone(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.5, 1.5), sr)
    fc = _nyq_cap(_loguniform(rng, 300, 2500), sr)
    rate, depth = rng.uniform(4, 16), rng.uniform(0.6, 1.0)
    t = np.arange(n) / sr
    env = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    return _random_fade(rng, env * _osc(rng, np.full(n, fc), sr), sr)


def _vibrato(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.5, 1.5), sr)
    fc = _loguniform(rng, 400, 2500)
    rate, depth = rng.uniform(4, 9), rng.uniform(0.02, 0.06)
    t = np.arange(n) / sr
    track = _nyq_cap(fc * (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))), sr)
    return _random_fade(rng, _osc(rng, track, sr), sr)


def _siren(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = _n(rng.uniform(0.8, 2.0), sr)
    f1 = _loguniform(rng, 500, 1200)
    f2 = _nyq_cap(f1 * rng.uniform(1.2, 1.6), sr)
    half = rng.uniform(0.15, 0.4)
    t = np.arange(n) / sr + rng.uniform(0, 2 * half)
    track = np.where((t // half) % 2 == 0, f1, f2)
    # glide over ~15 ms between the two pitches: a hard jump splatters broadband energy
    glide = np.ones(_n(0.015, sr)) / _n(0.015, sr)
    track = np.convolve(np.pad(track, len(glide), mode="edge"), glide, mode="same")[len(glide) : -len(glide)]
    return _random_fade(rng, _osc(rng, track, sr), sr)


def _bark(rng: np.random.Generator, sr: int) -> np.ndarray:
    f0 = _loguniform(rng, 350, 700)
    noise_mix = rng.uniform(0.4, 1.0)

    def pulse() -> np.ndarray:
        m = _n(rng.uniform(0.06, 0.15), sr)
        t = np.arange(m) / sr
        # pitch drops through the pulse; harmonics plus a noisy formant band
        track = f0 * (1 - rng.uniform(0.1, 0.25) * t / t[-1])
        voiced = sum(_osc(rng, _nyq_cap(track * h, sr), sr) / h for h in (1, 2, 3))
        breath = _band_noise(rng, m, sr, 800, _nyq_cap(2200.0, sr))
        env = (1 - np.exp(-t / 0.005)) * np.exp(-t / (0.35 * t[-1]))
        return env * (voiced + noise_mix * breath)

    return _pulses(rng, sr, int(rng.integers(1, 4)), (0.08, 0.25), pulse)


def _thump(rng: np.random.Generator, sr: int) -> np.ndarray:
    f_start, f_end = rng.uniform(120, 220), rng.uniform(45, 70)
    tau = rng.uniform(0.04, 0.12)

    def pulse() -> np.ndarray:
        t = np.arange(_n(5 * tau, sr)) / sr
        track = f_end + (f_start - f_end) * np.exp(-t / 0.03)
        return np.exp(-t / tau) * _osc(rng, track, sr)

    return _pulses(rng, sr, int(rng.integers(1, 4)), (0.1, 0.4), pulse)


_EVENTS: dict[str, tuple[str, EventFn]] = {
    "/synth/tone": ("Pure tone", _tone),
    "/synth/chirp_up": ("Rising chirp", _chirp_up),
    "/synth/chirp_down": ("Falling chirp", _chirp_down),
    "/synth/noise_low": ("Low noise burst", _noise_low),
    "/synth/noise_high": ("High noise burst", _noise_high),
    "/synth/click_train": ("Click train", _click_train),
    "/synth/harmonic": ("Harmonic stack", _harmonic),
    "/synth/am_tone": ("Amplitude-modulated tone", _am_tone),
    "/synth/vibrato": ("Vibrato tone", _vibrato),
    "/synth/siren": ("Two-tone siren", _siren),
    "/synth/bark": ("Bark-like pulses", _bark),
    "/synth/thump": ("Low thump", _thump),
}

SYNTH_CLASSES: list[tuple[str, str]] = [(mid, name) for mid, (name, _) in _EVENTS.items()]


def synth_label_map() -> LabelMap:
    """The label map of the synthetic classes, in :data:`SYNTH_CLASSES` order."""
    return LabelMap(tuple(m for m, _ in SYNTH_CLASSES), tuple(n for _, n in SYNTH_CLASSES))


# ---------------------------------------------------------------------------
# Rendering


def render_event(rng: np.random.Generator, mid: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One instance of class ``mid``, scaled to a common loudness (float64)."""
    if mid not in _EVENTS:
        raise ValueError(f"unknown synthetic class '{mid}'")
    x = _EVENTS[mid][1](rng, sample_rate)
    # RMS-normalise but bound the crest factor, so a very sparse sound can't get a peak
    # that pushes everything else down at peak-normalisation
    rms, peak = np.sqrt(np.mean(x**2)), np.max(np.abs(x))
    return x / max(rms, peak / 10.0, 1e-12)


def _place(rng: np.random.Generator, mix: np.ndarray, event: np.ndarray, mid: str, sr: int) -> SynthEvent:
    """Add ``event`` into ``mix`` (cut with a fade if it doesn't fit); return its placement."""
    n = len(mix)
    if len(event) > n:
        event = _fade(event[:n], sr, 0.0, 0.02)
    onset = int(rng.integers(0, n - len(event) + 1))
    mix[onset : onset + len(event)] += event
    return SynthEvent(mid, onset / sr, (onset + len(event)) / sr)


def _background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS white or pink background noise."""
    if rng.random() < 0.5:
        return rng.standard_normal(n)
    # long recordings: shape in blocks to bound FFT memory; the seams sit far below the events
    block = 1 << 19
    return np.concatenate([_pink_noise(rng, min(block, n - s), sr) for s in range(0, n, block)])


def _finish(
    rng: np.random.Generator, mix: np.ndarray, loudest: float, sr: int, snr_db_range: tuple[float, float] = (6.0, 30.0)
) -> np.ndarray:
    """Add background noise at a random SNR (re the loudest event) and peak-normalise to a random level."""
    snr_db = rng.uniform(*snr_db_range)
    mix = mix + _background(rng, len(mix), sr) * loudest * 10 ** (-snr_db / 20)
    peak = float(np.max(np.abs(mix)))
    return (mix * (rng.uniform(0.3, 0.9) / max(peak, 1e-12))).astype(np.float32)


def render_clip(
    rng: np.random.Generator,
    duration: float,
    sample_rate: int = SAMPLE_RATE,
    *,
    num_events: int | None = None,
    first_class: str | None = None,
) -> RenderedClip:
    """Render one multi-label clip of ``duration`` seconds.

    1-3 events of distinct classes (``num_events`` fixes the count, ``first_class``
    the first one's class) at random onsets and levels over background noise.
    """
    if duration <= 0:
        raise ValueError("duration must be positive")
    mids = [m for m, _ in SYNTH_CLASSES]
    if first_class is not None and first_class not in _EVENTS:
        raise ValueError(f"unknown synthetic class '{first_class}'")
    k = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])) if num_events is None else num_events
    if not 1 <= k <= len(mids):
        raise ValueError(f"num_events must be in 1..{len(mids)}")
    first = first_class if first_class is not None else mids[int(rng.integers(len(mids)))]
    rest = [m for m in mids if m != first]
    chosen = [first] + [rest[i] for i in rng.choice(len(rest), size=k - 1, replace=False)]

    mix = np.zeros(_n(duration, sample_rate))
    events, loudest = [], 0.0
    for mid in chosen:
        gain = 10 ** (rng.uniform(-10.0, 0.0) / 20)
        loudest = max(loudest, gain)
        events.append(_place(rng, mix, gain * render_event(rng, mid, sample_rate), mid, sample_rate))
    wave = _finish(rng, mix, loudest, sample_rate)
    present = set(chosen)
    labels = [m for m in mids if m in present]
    return RenderedClip(wave, labels, sorted(events, key=lambda e: (e.onset_s, e.mid)))


def render_long_recording(
    rng: np.random.Generator, duration_s: float, events_per_minute: float, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[SynthEvent]]:
    """A long recording with known event positions (for long-audio prediction tests).

    ``round(duration_s / 60 * events_per_minute)`` events of random classes at uniform
    random onsets (they may overlap), over background noise; events sorted by onset.
    """
    if duration_s <= 0 or events_per_minute < 0:
        raise ValueError("duration_s must be positive and events_per_minute non-negative")
    mids = [m for m, _ in SYNTH_CLASSES]
    mix = np.zeros(_n(duration_s, sample_rate))
    events, loudest = [], 1.0
    for _ in range(int(round(duration_s / 60 * events_per_minute))):
        mid = mids[int(rng.integers(len(mids)))]
        gain = 10 ** (rng.uniform(-6.0, 0.0) / 20)
        events.append(_place(rng, mix, gain * render_event(rng, mid, sample_rate), mid, sample_rate))
    # cleaner than the training clips: these recordings test where events are found
    return _finish(rng, mix, loudest, sample_rate, (15.0, 30.0)), sorted(events, key=lambda e: (e.onset_s, e.mid))


# ---------------------------------------------------------------------------
# Dataset on disk


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for clip ``index`` of ``split``: independent of the clip count."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], index)))


def _is_synth_output(out_dir: Path) -> bool:
    try:
        info = json.loads((out_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("generator") == _GENERATOR_TAG


def _prepare_dir(out_dir: Path) -> None:
    """Create ``out_dir``, or clear a previous synth output in it; refuse anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not _is_synth_output(out_dir):
            raise UserError(
                f"{out_dir} is not empty and is not a previous synthetic dataset (no {MARKER_NAME}); "
                "choose an empty or new folder"
            )
        # remove only files this generator writes, so stale clips from a larger run can't linger
        for split in _SPLIT_CODES:
            for old in (out_dir / "audio" / split).glob(f"{split}_*.wav"):
                old.unlink()
            (out_dir / f"{split}.json").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_marker(out_dir: Path, info: dict) -> None:
    (out_dir / MARKER_NAME).write_text(json.dumps(info, indent=1), encoding="utf-8")


def make_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_train: int = 400,
    num_eval: int = 100,
    duration: float = 3.0,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write the synthetic dataset to ``out_dir`` and return its paths and counts.

    Every class starts a clip in turn (round-robin), so each split holds every class
    once it has at least ``len(SYNTH_CLASSES)`` clips. ``progress`` is called after
    each clip with the number of clips written so far (of ``num_train + num_eval``).
    Refuses a non-empty folder unless it holds a previous synthetic dataset.
    """
    if num_train < 1 or num_eval < 1:
        raise UserError("the synthetic dataset needs at least one train and one eval clip")
    if duration <= 0:
        raise UserError(f"clip duration must be positive, got {duration}")
    if sample_rate < 8000:
        raise UserError(f"sample rate {sample_rate} Hz is too low for the synthetic classes (need >= 8000)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")

    out = Path(out_dir)
    _prepare_dir(out)
    info = {
        "generator": _GENERATOR_TAG,
        "format_version": _FORMAT_VERSION,
        "seed": int(seed),
        "num_train": num_train,
        "num_eval": num_eval,
        "duration": duration,
        "sample_rate": sample_rate,
        "complete": False,
    }
    # marker first: an interrupted run still leaves a folder we may overwrite later
    _write_marker(out, info)
    label_map = synth_label_map()
    label_map.to_csv(out / "class_labels_indices.csv")

    mids = [m for m, _ in SYNTH_CLASSES]
    done = 0
    manifests: dict[str, Path] = {}
    for split, count in (("train", num_train), ("eval", num_eval)):
        audio_dir = out / "audio" / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        clips: list[Clip] = []
        for i in range(count):
            rendered = render_clip(clip_rng(seed, split, i), duration, sample_rate, first_class=mids[i % len(mids)])
            path = audio_dir / f"{split}_{i:05d}.wav"
            sf.write(str(path), rendered.waveform, sample_rate, subtype="PCM_16", format="WAV")
            clips.append(Clip(path.stem, path, tuple(rendered.labels)))
            done += 1
            if progress is not None:
                progress(done)
        manifests[split] = out / f"{split}.json"
        write_json_manifest(manifests[split], clips, relative_to=out)

    _write_marker(out, {**info, "complete": True})
    return {
        "root": out,
        "label_map": out / "class_labels_indices.csv",
        "train_manifest": manifests["train"],
        "eval_manifest": manifests["eval"],
        "marker": out / MARKER_NAME,
        "num_train": num_train,
        "num_eval": num_eval,
        "num_classes": len(label_map),
        "duration": duration,
        "sample_rate": sample_rate,
        "seed": int(seed),
    }
