"""Scoring a model over a manifest and computing tagging metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import csv
import io
import math

import numpy as np
import torch

from torch.utils.data import DataLoader

from dass_distill.console import make_progress
from dass_distill.data.dataset import Batch, ClipDataset, collate
from dass_distill.data.manifest import load_manifest
from dass_distill.errors import UserError
from dass_distill.inference import load_tagger
from dass_distill.metrics import tagging_metrics


@dataclass
class Scores:
    """Sigmoid scores and targets of the clips that could be read, plus those that could not."""

    ids: list[str]
    scores: np.ndarray  # (N, C) probabilities
    targets: np.ndarray  # (N, C) multi-hot
    errors: list[tuple[str, str]] = field(default_factory=list)

    def metrics(self) -> dict:
        return tagging_metrics(self.scores, self.targets)


@torch.no_grad()
def score_batches(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_batch: Callable[[int], None] | None = None,
) -> Scores:
    """Run ``forward`` (features -> logits) over batches; sigmoid scores in fp32."""
    ids, scores, targets, errors = [], [], [], []
    for batch in batches:
        errors.extend(batch.errors)
        if len(batch):
            logits = forward(batch.features.to(device=device, dtype=dtype))
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            targets.append(batch.labels.numpy())
            ids.extend(batch.ids)
        if on_batch is not None:
            on_batch(len(batch) + len(batch.errors))
    if not scores:
        raise RuntimeError("no clip of the evaluation set could be read")
    return Scores(ids, np.concatenate(scores), np.concatenate(targets), errors)


def evaluate_tagger(folder, data, label_map=None, batch_size: int = 16, num_workers: int = 0,
                    backend: str = "torch", with_scores: bool = False) -> dict:
    """Metrics of an exported model folder (run by ``backend``) on a manifest whose labels match the model's
    (``with_scores``: also the :class:`Scores` themselves, under ``"scores"``, e.g. for plots)."""
    tagger = load_tagger(folder, backend)
    manifest = load_manifest(data, label_map)
    if list(manifest.label_map.ids) != list(tagger.label_ids):
        raise UserError(f"{folder} predicts {len(tagger.label_ids)} classes that differ from the label map of {data}")
    dataset = ClipDataset(manifest, tagger.featurize_clip, tagger.sample_rate)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    with make_progress() as progress:
        task = progress.add_task("evaluate", total=len(manifest))
        scores = score_batches(tagger.module, loader, on_batch=lambda n: progress.advance(task, n))
    metrics = scores.metrics()
    label_ids, label_names = list(manifest.label_map.ids), list(manifest.label_map.names)
    result = {**metrics, "clips": len(scores.ids), "errors": scores.errors,
              "label_ids": label_ids, "label_names": label_names,
              "per_class": per_class_records(label_ids, label_names, metrics)}
    return {**result, "scores": scores} if with_scores else result


def per_class_records(label_ids, label_names, metrics: dict) -> list[dict]:
    """One dict per class, in label-map order: index, label_id, label, positives, ap, auc
    (NaN where undefined: no positive for AP, no positive or no negative for AUC)."""
    return [{"index": i, "label_id": mid, "label": name, "positives": int(pos), "ap": float(ap), "auc": float(auc)}
            for i, (mid, name, pos, ap, auc) in enumerate(zip(label_ids, label_names, metrics["positives"],
                                                              metrics["per_class_ap"], metrics["per_class_auc"]))]


def best_and_worst(records: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """The ``n`` classes of highest AP (best first) and of lowest AP (worst first); classes
    without an AP are left out. Ties keep label-map order."""
    ranked = sorted((r for r in records if math.isfinite(r["ap"])), key=lambda r: -r["ap"])
    n = max(0, min(n, len(ranked)))
    return ranked[:n], sorted(ranked, key=lambda r: r["ap"])[:n]


PER_CLASS_CSV_FIELDS = ["index", "label_id", "label", "positives", "ap", "auc"]


def per_class_csv(records: list[dict]) -> str:
    """CSV text of :func:`per_class_records` (empty cells where a value is undefined)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_CLASS_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({**r, **{k: f"{r[k]:.6f}" if math.isfinite(r[k]) else "" for k in ("ap", "auc")}})
    return buf.getvalue()
