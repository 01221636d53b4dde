"""Torch datasets over a manifest: decoded audio -> features, labels, cached teacher logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from dass_distill.data.audio import AudioError, read_audio
from dass_distill.data.manifest import Manifest

if TYPE_CHECKING:
    from dass_distill.data.views import ViewSpec


class TeacherTargets:
    """Teacher logits for clips, read by id from a logit cache (one handle per worker).

    With several members (an ensemble), each member's cached logits are read and
    combined with :func:`dass_distill.teachers.combine_logits` (``combine``, ``weights``).
    """

    def __init__(self, reader, teacher: str | list[str], combine: str = "prob_mean",
                 weights: list[float] | None = None, name: str | None = None) -> None:
        self.reader = reader
        self.members = [teacher] if isinstance(teacher, str) else list(teacher)
        self.teacher = name or "+".join(self.members)
        self.combine = combine
        self.weights = weights

    def get(self, clip_ids: list[str], views: list[int] | None = None) -> np.ndarray:
        if len(self.members) == 1:
            return self.reader.get(clip_ids, self.members[0], views=views)
        from dass_distill.teachers import combine_logits

        stacked = torch.from_numpy(np.stack([self.reader.get(clip_ids, m, views=views).astype(np.float32)
                                             for m in self.members]))
        return combine_logits(stacked, self.combine, self.weights).numpy()


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, F)
    labels: torch.Tensor  # (B, C)
    ids: list[str]
    teacher_logits: torch.Tensor | None = None  # (B, C); rows of NaN = no teacher for that clip
    errors: list[tuple[str, str]] = field(default_factory=list)  # (clip id, reason) of skipped clips

    def __len__(self) -> int:
        return len(self.ids)


class ClipDataset(Dataset):
    """Items are dicts with ``features`` (T, F), ``labels`` (C,), ``id``; a clip that cannot
    be decoded yields ``{"id", "error"}`` so the collate step can skip and report it.

    With ``teacher`` set, ``__getitems__`` reads the whole batch's teacher logits in one
    cache call (torch's DataLoader uses it for batched fetching).

    With ``views`` (the cache's :class:`~dass_distill.data.views.ViewSpec`), indices are
    ``(clip index, view)`` pairs and each item is that cached view replayed: the same
    mixup partner and weight, shift, gain and SpecAugment masks the teacher saw; the
    labels are mixed with the same weight.
    """

    def __init__(
        self,
        manifest: Manifest,
        featurize: Callable[[torch.Tensor], torch.Tensor],
        sample_rate: int,
        teacher: TeacherTargets | None = None,
        labels_only_ids: set[str] | None = None,
        memoize: bool = False,
        views: "ViewSpec | None" = None,
    ) -> None:
        self.manifest = manifest
        self.featurize = featurize
        self.sample_rate = sample_rate
        self.teacher = teacher
        self.labels_only_ids = labels_only_ids or set()
        self.targets = manifest.targets()
        self.views = views
        self._memo: dict[int, torch.Tensor] | None = {} if memoize and views is None else None
        self._row_of = {c.id: i for i, c in enumerate(manifest.clips)} if views is not None else {}

    def __len__(self) -> int:
        return len(self.manifest)

    def _features(self, index: int) -> torch.Tensor:
        if self._memo is not None and index in self._memo:
            return self._memo[index]
        wave = read_audio(self.manifest.clips[index].path, self.sample_rate)
        feats = self.featurize(wave)
        if self._memo is not None:
            self._memo[index] = feats
        return feats

    def __getitem__(self, index) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list) -> list[dict]:
        if self.views is not None:
            return self._view_items(indices)
        items = []
        for i in indices:
            clip = self.manifest.clips[i]
            try:
                items.append({"id": clip.id, "features": self._features(i), "labels": torch.from_numpy(self.targets[i])})
            except AudioError as e:
                items.append({"id": clip.id, "error": str(e)})
        if self.teacher is not None:
            good = [it for it in items if "error" not in it]
            wanted = [it["id"] for it in good if it["id"] not in self.labels_only_ids]
            logits = dict(zip(wanted, self.teacher.get(wanted))) if wanted else {}
            self._attach(good, logits)
        return items

    def _attach(self, good: list[dict], logits: dict) -> None:
        for it in good:
            row = logits.get(it["id"])
            it["teacher_logits"] = torch.from_numpy(row) if row is not None else torch.full_like(it["labels"], float("nan"))

    def _view_items(self, indices: list[tuple[int, int]]) -> list[dict]:
        from dass_distill.data.views import mask_features, render_view

        reader = self.teacher.reader
        pairs = [(int(i), int(v)) for i, v in indices]
        cached = [(i, v) for i, v in pairs if self.manifest.clips[i].id not in self.labels_only_ids]
        params = dict(zip(cached, reader.view_params([self.manifest.clips[i].id for i, _ in cached],
                                                     [v for _, v in cached]))) if cached else {}
        items = []
        for i, v in pairs:
            clip = self.manifest.clips[i]
            try:
                if (i, v) not in params:  # no cached views (labels-only clip): the clip as is
                    items.append({"id": clip.id, "features": self._features(i),
                                  "labels": torch.from_numpy(self.targets[i])})
                    continue
                p = params[(i, v)]
                labels = torch.from_numpy(self.targets[i])
                partner = None
                if int(p["partner"]) >= 0:
                    pid = reader.clip_id(int(p["partner"]))
                    j = self._row_of.get(pid)
                    if j is None:
                        raise AudioError(f"view {v} mixes in clip {pid}, which is not in the training manifest")
                    partner = read_audio(self.manifest.clips[j].path, self.sample_rate)
                    lam = float(p["lam"])
                    labels = lam * labels + (1.0 - lam) * torch.from_numpy(self.targets[j])
                wave = render_view(read_audio(clip.path, self.sample_rate), partner, p, self.sample_rate, self.views)
                items.append({"id": clip.id, "view": v, "labels": labels,
                              "features": mask_features(self.featurize(wave), p)})
            except AudioError as e:
                items.append({"id": clip.id, "error": str(e)})
        if self.teacher is not None:
            good = [it for it in items if "error" not in it and "view" in it]
            logits = self.teacher.get([it["id"] for it in good], [it["view"] for it in good]) if good else []
            for it, row in zip(good, logits):
                it["teacher_logits"] = torch.from_numpy(row)
            for it in items:  # labels-only clips
                if "error" not in it and "view" not in it:
                    it["teacher_logits"] = torch.full_like(it["labels"], float("nan"))
        return items


def collate(items: list[dict]) -> Batch:
    """Stack the good items; carry the failed ones as ``errors``."""
    good = [it for it in items if "error" not in it]
    errors = [(it["id"], it["error"]) for it in items if "error" in it]
    if not good:
        return Batch(torch.empty(0), torch.empty(0), [], None, errors)
    teacher = torch.stack([it["teacher_logits"] for it in good]) if "teacher_logits" in good[0] else None
    return Batch(
        torch.stack([it["features"] for it in good]),
        torch.stack([it["labels"] for it in good]),
        [it["id"] for it in good],
        teacher,
        errors,
    )


class WaveformDataset(Dataset):
    """Decoded mono waveforms at ``sample_rate`` (for teachers, which run their own front end)."""

    def __init__(self, manifest: Manifest, sample_rate: int) -> None:
        self.manifest = manifest
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> dict:
        clip = self.manifest.clips[index]
        try:
            return {"id": clip.id, "wave": read_audio(clip.path, self.sample_rate)}
        except AudioError as e:
            return {"id": clip.id, "error": str(e)}


def collate_waves(items: list[dict]) -> tuple[list[str], list[torch.Tensor], list[tuple[str, str]]]:
    """(ids, waveforms of their own lengths, errors)."""
    good = [it for it in items if "error" not in it]
    return [it["id"] for it in good], [it["wave"] for it in good], [(it["id"], it["error"]) for it in items if "error" in it]
