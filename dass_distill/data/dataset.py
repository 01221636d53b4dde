"""Torch datasets over a manifest: decoded audio -> features, labels, cached teacher logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dass_distill.data.audio import AudioError, fix_length, read_audio
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


class Sample(NamedTuple):
    """One training item: clip index, cached view (-1: the whole clip), mixup partner index (-1: none)
    and the weight ``lam`` of the clip itself in the mix."""

    index: int
    view: int = -1
    partner: int = -1
    lam: float = 1.0


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, F)
    labels: torch.Tensor  # (B, C), mixed like the inputs
    ids: list[str]
    teacher_logits: torch.Tensor | None = None  # (B, C); rows of NaN = no teacher for that clip
    errors: list[tuple[str, str]] = field(default_factory=list)  # (clip id, reason) of skipped clips
    partner_logits: torch.Tensor | None = None  # (B, C) teacher logits of the mixup partners (NaN: none)
    lam: torch.Tensor | None = None  # (B,) weight of each clip in its mix (1: not mixed)

    def __len__(self) -> int:
        return len(self.ids)


class ClipDataset(Dataset):
    """Items are dicts with ``features`` (T, F), ``labels`` (C,), ``id``; a clip that cannot
    be decoded yields ``{"id", "error"}`` so the collate step can skip and report it.

    Indices are ints or :class:`Sample` tuples. With ``teacher`` set, ``__getitems__`` reads
    the whole batch's teacher logits in one cache call per member (torch's DataLoader uses
    it for batched fetching).

    - ``Sample(i, view=v)`` (needs ``views``, the cache's
      :class:`~dass_distill.data.views.ViewSpec`): cached view ``v`` replayed exactly: the
      mixup partner and weight, shift, gain and SpecAugment masks the teacher saw; labels
      mixed with the same weight; the teacher target is that view's logits.
    - ``Sample(i, partner=j, lam=l)``: waveform mixup ``l * x_i + (1 - l) * x_j`` (partner
      cut or padded to the clip's length), labels mixed the same way, and the teacher
      targets of both clips returned (``partner_logits``, ``lam``) for the loss to mix.
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
        self._memo: dict[int, torch.Tensor] | None = {} if memoize else None
        self._row_of = {c.id: i for i, c in enumerate(manifest.clips)} if views is not None else {}

    def __len__(self) -> int:
        return len(self.manifest)

    def _features(self, index: int) -> torch.Tensor:
        if self._memo is not None and index in self._memo:
            return self._memo[index]
        feats = self.featurize(self._wave(index))
        if self._memo is not None:
            self._memo[index] = feats
        return feats

    def _wave(self, index: int) -> torch.Tensor:
        return read_audio(self.manifest.clips[index].path, self.sample_rate)

    def _labels(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.targets[index])

    def __getitem__(self, index) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list) -> list[dict]:
        samples = [s if isinstance(s, tuple) else Sample(int(s)) for s in indices]
        samples = [Sample(*s) for s in samples]
        view_params = self._view_params(samples)
        items = []
        for s in samples:
            clip = self.manifest.clips[s.index]
            try:
                if s.view >= 0 and clip.id not in self.labels_only_ids:
                    items.append(self._view_item(s, view_params[(s.index, s.view)]))
                elif s.partner >= 0:
                    items.append(self._mixup_item(s))
                else:
                    items.append({"id": clip.id, "features": self._features(s.index), "labels": self._labels(s.index)})
            except AudioError as e:
                items.append({"id": clip.id, "error": str(e)})
        if self.teacher is not None:
            self._attach_teacher([it for it in items if "error" not in it])
        return items

    def _view_params(self, samples: list[Sample]) -> dict:
        wanted = [(s.index, s.view) for s in samples
                  if s.view >= 0 and self.manifest.clips[s.index].id not in self.labels_only_ids]
        if not wanted:
            return {}
        if self.views is None or self.teacher is None:
            raise ValueError("samples name cached views, but this dataset has no cache with views")
        params = self.teacher.reader.view_params([self.manifest.clips[i].id for i, _ in wanted], [v for _, v in wanted])
        return dict(zip(wanted, params))

    def _view_item(self, s: Sample, p) -> dict:
        from dass_distill.data.views import mask_features, render_view

        clip = self.manifest.clips[s.index]
        labels = self._labels(s.index)
        partner = None
        if int(p["partner"]) >= 0:
            pid = self.teacher.reader.clip_id(int(p["partner"]))
            j = self._row_of.get(pid)
            if j is None:
                raise AudioError(f"view {s.view} mixes in clip {pid}, which is not in the training manifest")
            partner = self._wave(j)
            lam = float(p["lam"])
            labels = lam * labels + (1.0 - lam) * self._labels(j)
        wave = render_view(self._wave(s.index), partner, p, self.sample_rate, self.views)
        return {"id": clip.id, "view": s.view, "labels": labels, "features": mask_features(self.featurize(wave), p)}

    def _mixup_item(self, s: Sample) -> dict:
        a = self._wave(s.index)
        b = fix_length(self._wave(s.partner), a.numel())
        lam = float(s.lam)
        return {"id": self.manifest.clips[s.index].id, "features": self.featurize(lam * a + (1.0 - lam) * b),
                "labels": lam * self._labels(s.index) + (1.0 - lam) * self._labels(s.partner),
                "partner_id": self.manifest.clips[s.partner].id, "lam": lam}

    def _attach_teacher(self, good: list[dict]) -> None:
        """Teacher logits per item (NaN rows where the cache has none), read in one call per kind."""
        nan = torch.full((self.targets.shape[1],), float("nan"))
        for it in good:
            it["teacher_logits"] = nan
        viewed = [it for it in good if "view" in it]
        if viewed:
            logits = self.teacher.get([it["id"] for it in viewed], [it["view"] for it in viewed])
            for it, row in zip(viewed, logits):
                it["teacher_logits"] = torch.from_numpy(row)
        plain = [it for it in good if "view" not in it and it["id"] not in self.labels_only_ids]
        ids = sorted({it["id"] for it in plain} | {it["partner_id"] for it in good if "partner_id" in it
                                                   and it["partner_id"] not in self.labels_only_ids})
        if not ids:
            return
        found = dict(zip(ids, self.teacher.get(ids)))
        for it in plain:
            it["teacher_logits"] = torch.from_numpy(found[it["id"]])
        for it in good:
            if "partner_id" in it:
                row = found.get(it["partner_id"])
                it["partner_logits"] = torch.from_numpy(row) if row is not None else nan


def collate(items: list[dict]) -> Batch:
    """Stack the good items; carry the failed ones as ``errors``."""
    good = [it for it in items if "error" not in it]
    errors = [(it["id"], it["error"]) for it in items if "error" in it]
    if not good:
        return Batch(torch.empty(0), torch.empty(0), [], None, errors)
    teacher = torch.stack([it["teacher_logits"] for it in good]) if "teacher_logits" in good[0] else None
    partner = lam = None
    if any("lam" in it for it in good):
        lam = torch.tensor([it.get("lam", 1.0) for it in good], dtype=torch.float32)
        if teacher is not None:
            partner = torch.stack([it.get("partner_logits", torch.full_like(it["teacher_logits"], float("nan")))
                                   for it in good])
    return Batch(
        torch.stack([it["features"] for it in good]),
        torch.stack([it["labels"] for it in good]).float(),
        [it["id"] for it in good],
        teacher,
        errors,
        partner,
        lam,
    )
