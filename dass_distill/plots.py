"""Pictures of predictions and evaluations (matplotlib, no display needed).

* :func:`plot_prediction` (``predict --plot``): the recording's log-mel spectrogram, and
  beneath it the top tags' scores: a heat map over time for a timeline (long audio, one
  column per window), bars for a single clip.
* :func:`plot_evaluation` (``evaluate --plot``): per-class AP bars (every class up to
  :data:`MAX_BARS`, else the best and worst halves of that many) and the precision-recall
  curves of the best and the worst classes.

The spectrogram is read window by window and averaged down to at most
:data:`MAX_COLUMNS` time columns, so a recording of hours costs the memory of one window.
Figures are drawn with matplotlib's object API on the Agg canvas (no global pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from dass_distill.frontend import KaldiFbank

if TYPE_CHECKING:
    from dass_distill.timeline import Timeline

MAX_COLUMNS = 2000
MAX_BARS = 60
SPECTROGRAM_WINDOW_S = 30.0


def spectrogram(path: str | Path, sample_rate: int = 16000, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, float]:
    """(mel bins, columns) log-mel of a file of any length, time-averaged to ``max_columns`` at most,
    and its duration in seconds."""
    from dass_distill.timeline import WindowReader

    fe = KaldiFbank(sampling_rate=sample_rate)
    with WindowReader(path, sample_rate, SPECTROGRAM_WINDOW_S, SPECTROGRAM_WINDOW_S) as reader:
        frames = max(1, round(reader.duration_s * 1000 / fe.frame_shift))
        pool = max(1, math.ceil(frames / max_columns))
        parts, covered = [], 0
        for i in range(len(reader)):
            start = int(reader.starts[i])
            wave = reader.read(i)[max(0, covered - start):]  # the last window overlaps the one before it
            covered = start + reader.window
            feats = fe.fbank(wave)  # (frames, mel)
            usable = feats.shape[0] // pool * pool or feats.shape[0]
            parts.append(feats[:usable].reshape(-1, min(pool, usable), feats.shape[1]).mean(1))
        return torch.cat(parts).T.numpy(), reader.duration_s


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_prediction(out: str | Path, audio: str | Path, label_names: Sequence[str], scores: torch.Tensor,
                    timeline: Timeline | None = None, top_k: int = 5, sample_rate: int = 16000):
    """Spectrogram of ``audio`` above its top-``top_k`` tags: ``scores`` (C,) clip scores, and the
    timeline's per-window scores as a heat map when there is more than one window. Writes ``out``
    (PNG) and returns the matplotlib Figure."""
    out = Path(out)
    spec, duration = spectrogram(audio, sample_rate)
    top = scores.topk(min(top_k, len(scores))).indices.tolist()
    fig = _figure(10, 6)
    ax_spec, ax_tags = fig.subplots(2, 1, height_ratios=[3, 2])
    ax_spec.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, spec.shape[0]))
    ax_spec.set(title=Path(audio).name, ylabel="mel bin", xlabel="time (s)")
    names = [label_names[i] for i in top]
    if timeline is not None and len(timeline) > 1:
        heat = timeline.scores[:, top].T.numpy()  # (tags, windows)
        centres = (timeline.starts + timeline.ends) / 2
        image = ax_tags.imshow(heat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                               extent=(0, duration, len(top) - 0.5, -0.5))
        ax_tags.set_yticks(range(len(top)), names)
        ax_tags.set(xlabel=f"time (s): {len(centres)} windows of {timeline.window_s:g} s, hop {timeline.hop_s:g} s",
                    xlim=(0, duration))
        fig.colorbar(image, ax=ax_tags, label="score")
    else:
        values = scores[top].numpy()
        ax_tags.barh(range(len(top)), values, color="tab:blue")
        ax_tags.set_yticks(range(len(top)), names)
        ax_tags.invert_yaxis()
        ax_tags.set(xlim=(0, 1), xlabel="score (whole clip)")
    fig.savefig(out, dpi=100)
    return fig


def precision_recall(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of one class at every score threshold (descending)."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / max(1, hits.sum())
    return precision, recall


def plot_evaluation(out: str | Path, per_class: list[dict], scores: np.ndarray, targets: np.ndarray,
                    curves: int = 3, title: str = ""):
    """Per-class AP bars and the precision-recall curves of the ``curves`` best and worst classes;
    writes ``out`` (PNG) and returns the matplotlib Figure."""
    out = Path(out)
    ranked = sorted((r for r in per_class if r["positives"] > 0 and np.isfinite(r["ap"])), key=lambda r: -r["ap"])
    if not ranked:
        raise ValueError("no class has a positive clip: nothing to plot")
    shown = ranked if len(ranked) <= MAX_BARS else ranked[: MAX_BARS // 2] + ranked[-MAX_BARS // 2:]
    fig = _figure(12, max(4.0, 0.22 * len(shown) + 1.5))
    ax_ap, ax_pr = fig.subplots(1, 2, width_ratios=[3, 2])
    ax_ap.barh(range(len(shown)), [r["ap"] for r in shown], color="tab:blue")
    ax_ap.set_yticks(range(len(shown)), [r["label"] for r in shown], fontsize=8)
    ax_ap.invert_yaxis()
    mean_ap = float(np.mean([r["ap"] for r in ranked]))
    ax_ap.axvline(mean_ap, color="black", linestyle="--", linewidth=1, label=f"mAP {mean_ap:.3f}")
    note = "" if len(shown) == len(ranked) else f" (best and worst {MAX_BARS // 2} of {len(ranked)})"
    ax_ap.set(xlim=(0, 1), xlabel="average precision", title=(title + "\n" if title else "") + "per-class AP" + note)
    ax_ap.legend(loc="lower right")
    picks = ranked[:curves] + [r for r in ranked[-curves:] if r not in ranked[:curves]]
    for rank, r in enumerate(picks):
        precision, recall = precision_recall(scores[:, r["index"]], targets[:, r["index"]])
        style = "-" if rank < min(curves, len(ranked)) else "--"
        ax_pr.plot(recall, precision, style, drawstyle="steps-post", label=f"{r['label']} (AP {r['ap']:.2f})")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
              title="precision-recall\nbest classes (solid), worst (dashed)")
    ax_pr.legend(fontsize=8, loc="lower left")
    fig.savefig(out, dpi=100)
    return fig
