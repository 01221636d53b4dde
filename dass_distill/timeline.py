"""Tag recordings of any length window by window, with memory bounded by one batch.

:class:`WindowReader` opens a file with :class:`soundfile.SoundFile` and, for each
window, seeks to it and reads only that segment, so a 10-hour file costs no more
memory than a 10-second one. :func:`tag_timeline` runs the windows through a
:class:`~dass_distill.inference.Tagger` in batches and returns a :class:`Timeline`:
one row of sigmoid scores per window plus clip-level scores.

Window placement (in samples at the tagger's rate, like ``ClipPolicy.starts``):
windows of ``window_s`` start every ``hop_s`` and the last one ends exactly at the
file's end, so every sample is covered and no window is padded; a file no longer than
one window gives exactly one window, the whole file. The default hop is half the
window (5 s for 10 s windows, the teachers' long-clip hop): an event shorter than
5 s that is cut by one window's edge lies whole inside a neighbouring window.

Resampling: a window of a file whose rate differs from the tagger's is read with a
margin of :data:`RESAMPLE_MARGIN_S` on both sides (clamped to the file), resampled
with the same torchaudio sinc filter as :func:`~dass_distill.data.audio.read_audio`,
and the margin is cut off afterwards. The read start is snapped to a multiple of
``file_rate / gcd`` input frames, so the resampled chunk's samples fall on exactly the
same output grid as resampling the whole file; the sinc kernel (``lowpass_filter_width``
6: under 1 ms) never reaches past the margin, so window edges see real neighbouring
audio, not the zero padding of a cut. Only floating-point rounding differs (~1e-7).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from dass_distill.data.audio import AudioError, resample
from dass_distill.errors import UserError
from dass_distill.frontend import window_starts

if TYPE_CHECKING:
    from dass_distill.inference import Tagger

DEFAULT_WINDOW_S = 10.0
DEFAULT_HOP_S = 5.0
#: audio read beyond each window edge when resampling (the sinc kernel needs < 1 ms)
RESAMPLE_MARGIN_S = 0.05


def _check_lengths(window_s: float, hop_s: float) -> None:
    if not window_s > 0:
        raise UserError(f"window length must be positive, got {window_s} s")
    if not hop_s > 0:
        raise UserError(f"window hop must be positive, got {hop_s} s")


class WindowReader:
    """Fixed windows of an audio file, read one at a time (mono float32 at ``sample_rate``).

    Window ``i`` covers output samples ``[starts[i], starts[i] + window)`` of the file as
    :func:`~dass_distill.data.audio.read_audio` would return it; only that segment (plus
    the resampling margin) is ever read from disk. Use as a context manager.
    """

    def __init__(self, path: str | Path, sample_rate: int, window_s: float = DEFAULT_WINDOW_S,
                 hop_s: float = DEFAULT_HOP_S) -> None:
        _check_lengths(window_s, hop_s)
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._file = _open(self.path)
        self.file_rate = self._file.samplerate
        self.file_frames = self._file.frames
        g = math.gcd(self.file_rate, sample_rate)
        self._in_block, self._out_block = self.file_rate // g, sample_rate // g
        # output length of a whole-file resample, in exact integer arithmetic
        self.num_samples = -(-self.file_frames * self._out_block // self._in_block)
        window = max(1, round(window_s * sample_rate))
        self.window = min(window, self.num_samples)
        self.starts = window_starts(self.num_samples, window, max(1, round(hop_s * sample_rate)))
        self._margin = 0 if self.file_rate == sample_rate else \
            math.ceil(RESAMPLE_MARGIN_S * self.file_rate / self._in_block) * self._in_block

    # -- geometry
    def __len__(self) -> int:
        return len(self.starts)

    @property
    def duration_s(self) -> float:
        return self.file_frames / self.file_rate

    @property
    def max_read_frames(self) -> int:
        """The most frames a single read asks for: one window plus the margins."""
        if self._margin == 0:
            return self.window
        blocks = -(-self.window // self._out_block) + 1
        return blocks * self._in_block + 2 * self._margin

    def _span(self, start: int, end: int) -> tuple[int, int, int]:
        """File frames ``[a, b)`` to read for output samples ``[start, end)`` and the output offset of ``a``."""
        if self._margin == 0:
            return start, end, start
        a = max(0, (start // self._out_block) * self._in_block - self._margin)
        b = min(self.file_frames, -(-end // self._out_block) * self._in_block + self._margin)
        return a, b, a // self._in_block * self._out_block

    # -- reading
    def read(self, i: int) -> torch.Tensor:
        """Window ``i`` as a 1-D float32 tensor of ``self.window`` samples."""
        start = self.starts[i]
        end = start + self.window
        a, b, offset = self._span(start, end)
        chunk = resample(self._read_mono(a, b), self.file_rate, self.sample_rate)
        wave = chunk[start - offset : end - offset]
        if len(wave) < self.window:
            # torchaudio sizes its output with float32 ceil: at the very end of a file it can
            # come out one sample short of the exact length
            wave = torch.nn.functional.pad(wave, (0, self.window - len(wave)))
        return wave

    def _read_mono(self, a: int, b: int) -> torch.Tensor:
        try:
            self._file.seek(a)
            data = self._file.read(b - a, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise AudioError(f"{self.path}: unreadable audio at {a / self.file_rate:.2f} s ({e})") from None
        if data.shape[0] != b - a:
            raise AudioError(f"{self.path}: read {data.shape[0]} of {b - a} frames at {a / self.file_rate:.2f} s "
                             "(truncated or corrupt file)")
        wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))  # downmix as read_audio does
        if not torch.isfinite(wave).all():
            raise AudioError(f"{self.path}: audio contains NaN or inf samples near {a / self.file_rate:.2f} s")
        return wave

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.read(i) for i in range(len(self)))

    def batches(self, batch_size: int) -> Iterator[list[torch.Tensor]]:
        """Consecutive windows, ``batch_size`` at a time (the last batch may be smaller)."""
        for first in range(0, len(self), batch_size):
            yield [self.read(i) for i in range(first, min(first + batch_size, len(self)))]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WindowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: Path) -> sf.SoundFile:
    """Open ``path`` for seeking reads; every problem becomes a one-line AudioError."""
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from None
    if f.frames <= 0:
        f.close()
        raise AudioError(f"{path}: audio has no samples")
    if not f.seekable():
        f.close()
        raise AudioError(f"{path}: audio format does not support seeking; convert it to WAV or FLAC")
    return f


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header (nothing is decoded); AudioError if unreadable."""
    f = _open(Path(path))
    try:
        return f.frames / f.samplerate
    finally:
        f.close()


# --------------------------------------------------------------------------- results
@dataclass
class Timeline:
    """Per-window scores of one recording.

    ``clip_scores`` is the max over windows of the window scores: a sound present
    anywhere in a long recording should be a tag of the whole recording, and a mean
    would dilute a short event by the recording's length.
    """

    path: str
    duration_s: float
    window_s: float
    hop_s: float
    starts: np.ndarray  # (n_windows,) seconds
    ends: np.ndarray  # (n_windows,) seconds
    scores: torch.Tensor  # (n_windows, C) sigmoid scores
    label_ids: list[str]
    label_names: list[str]
    clip_scores: torch.Tensor = field(init=False)  # (C,)

    def __post_init__(self) -> None:
        self.clip_scores = self.scores.max(dim=0).values

    def __len__(self) -> int:
        return len(self.starts)

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per window, the top-k (label name, score)."""
        values, idx = self.scores.topk(min(k, self.scores.shape[1]), dim=1)
        return [[(self.label_names[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), idx.tolist())]

    def clip_top(self, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (label name, score) of the whole recording (``clip_scores``)."""
        values, idx = self.clip_scores.topk(min(k, len(self.clip_scores)))
        return [(self.label_names[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]

    def to_dict(self, top_k: int = 5, all_scores: bool = False) -> dict:
        """JSON-ready summary: clip top-k, and per segment its extent and top-k (or every score)."""
        segments = []
        for i, tags in enumerate(self.top(top_k)):
            seg = {"start": round(float(self.starts[i]), 4), "end": round(float(self.ends[i]), 4),
                   "tags": [{"label": n, "score": s} for n, s in tags]}
            if all_scores:
                seg["scores"] = self.scores[i].tolist()
            segments.append(seg)
        return {"duration_s": self.duration_s, "window_s": self.window_s, "hop_s": self.hop_s,
                "clip_aggregate": "max", "clip": [{"label": n, "score": s} for n, s in self.clip_top(top_k)],
                **({"label_names": self.label_names} if all_scores else {}), "segments": segments}

    def to_json(self, path: str | Path | None = None, top_k: int = 5, all_scores: bool = False) -> str:
        """The :meth:`to_dict` document as JSON text; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(top_k, all_scores), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def csv_rows(self, top_k: int = 5) -> list[dict]:
        """One row per segment and top-k tag (long format; see :data:`CSV_FIELDS`)."""
        ids = {n: i for n, i in zip(self.label_names, self.label_ids)}
        return [{"file": self.path, "start_s": f"{self.starts[i]:.3f}", "end_s": f"{self.ends[i]:.3f}",
                 "rank": r + 1, "label_id": ids.get(name, ""), "label": name, "score": f"{score:.6f}", "error": ""}
                for i, tags in enumerate(self.top(top_k)) for r, (name, score) in enumerate(tags)]

    def to_csv(self, path: str | Path | None = None, top_k: int = 5) -> str:
        """CSV text of :meth:`csv_rows`; also written to ``path`` if given.

        Long format, one row per (segment, top-k tag): it stays small with 527 classes and
        filters directly ("where does Dog occur?"); the full score matrix is ``scores``
        or ``to_json(all_scores=True)``.
        """
        text = write_csv(self.csv_rows(top_k))
        if path is not None:
            Path(path).write_text(text)
        return text


CSV_FIELDS = ["file", "start_s", "end_s", "rank", "label_id", "label", "score", "error"]


def write_csv(rows: Sequence[dict]) -> str:
    """CSV text with :data:`CSV_FIELDS` columns."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- tagging
def tag_timeline(tagger: Tagger, path: str | Path, window_s: float = DEFAULT_WINDOW_S, hop_s: float = DEFAULT_HOP_S,
                 batch_size: int = 1, progress: bool = True) -> Timeline:
    """Score every window of ``path`` with ``tagger`` (a :class:`~dass_distill.inference.Tagger`).

    Memory: one batch of windows (audio, features, activations) plus the
    (n_windows, C) result, whatever the file's duration.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    with WindowReader(path, tagger.sample_rate, window_s, hop_s) as reader:
        scores = _score_windows(tagger, reader, batch_size, progress and len(reader) > batch_size)
        starts = np.asarray(reader.starts, dtype=np.float64) / tagger.sample_rate
        return Timeline(str(path), reader.duration_s, window_s, hop_s, starts, starts + reader.window / tagger.sample_rate,
                        scores, list(tagger.label_ids), list(tagger.label_names))


@torch.inference_mode()
def _score_windows(tagger: Tagger, reader: WindowReader, batch_size: int, show_progress: bool) -> torch.Tensor:
    from dass_distill.console import make_progress

    device = _device(tagger.module)
    out: torch.Tensor | None = None
    done = 0
    with make_progress(disable=not show_progress) as bar:
        task = bar.add_task(reader.path.name, total=len(reader))
        for waves in reader.batches(batch_size):
            feats = torch.stack([tagger.featurize(w) for w in waves]).to(device)
            batch = torch.sigmoid(tagger.module(feats).float()).cpu()
            if out is None:  # preallocated once the class count is known: no concatenation copies
                out = torch.empty(len(reader), batch.shape[1])
            out[done : done + len(waves)] = batch
            done += len(waves)
            bar.update(task, completed=done)
    assert out is not None  # a reader always has at least one window
    return out


def _device(module) -> torch.device:
    if not isinstance(module, torch.nn.Module):  # ONNX / torch.export runners take CPU tensors
        return torch.device("cpu")
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
