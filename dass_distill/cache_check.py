"""``dass-distill cache-check``: does a logit cache cover a manifest, and does it still agree
with its teachers?

Coverage: per teacher, the manifest's clips without logits (never written, failed, or
not in the cache at all) and the cached clips the manifest does not name. Labels: the
cache's label map against the manifest's. Verification (``--verify N``): the teacher is
rebuilt from the checkpoint recorded in the provenance (or one given explicitly, whose
sha256 must match), rerun on N random cached clips, and its logits compared with the
stored ones.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dass_distill.data.audio import AudioError, read_audio
from dass_distill.data.manifest import Manifest
from dass_distill.caching import teacher_logits
from dass_distill.data.views import ViewSpec, render_view
from dass_distill.errors import UserError
from dass_distill.logit_cache import LogitCacheReader
from dass_distill.logit_cache.storage import index_bits, rest_logit, unpack_indices
from dass_distill.teachers import ClipPolicy, Ensemble, Teacher, load_teacher

# float16 keeps 11 significant bits: a stored logit x is within |x| * 2^-11 of the teacher's.
FP16_RELATIVE = 2.0**-11


@dataclass
class TeacherCoverage:
    teacher: str
    cached: int  # rows with logits
    missing: list[str]  # in the manifest, no logits
    extra: list[str]  # logits, not in the manifest


@dataclass
class Verification:
    teacher: str
    clips: list[str]
    max_abs_diff: float
    max_excess: float  # largest |diff| beyond float16 rounding of the stored value
    atol: float
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.max_excess <= self.atol


@dataclass
class CheckReport:
    cache: Path
    manifest_clips: int
    labels_match: bool
    label_problem: str
    coverage: list[TeacherCoverage]
    failed: dict[str, str]
    verifications: list[Verification] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.labels_match and all(not c.missing and not c.extra for c in self.coverage)
                and all(v.ok for v in self.verifications))


def check_cache(
    cache: str | Path,
    manifest: Manifest,
    verify: int = 0,
    teachers: list[str] | None = None,
    atol: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    allow_pickle: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> CheckReport:
    """Coverage and label report of ``cache`` against ``manifest``; with ``verify > 0``, also
    rerun each teacher on that many random cached clips.

    ``teachers``: specs (``KIND:PATH`` or YAML) to verify with, instead of the checkpoints
    named in the provenance. ``atol`` bounds the difference beyond float16 rounding.
    """
    reader = LogitCacheReader(cache)
    lm = manifest.label_map
    labels_match = list(reader.label_ids) == list(lm.ids)
    problem = "" if labels_match else (
        f"the cache has {reader.num_classes} classes, the manifest's label map {len(lm)}"
        if reader.num_classes != len(lm) else "same number of classes, different ids or order")
    coverage = []
    for name in reader.teachers:
        missing, extra = reader.coverage(manifest.ids, name)
        coverage.append(TeacherCoverage(name, reader.num_written(name), missing, extra))
    report = CheckReport(Path(cache), len(manifest), labels_match, problem, coverage, reader.failed)
    if verify > 0:
        report.verifications = _verify(reader, manifest, verify, teachers, atol, seed, device, allow_pickle, log)
    return report


def _verify(reader: LogitCacheReader, manifest: Manifest, n: int, specs: list[str] | None, atol: float, seed: int,
            device: str, allow_pickle: bool, log: Callable[[str], None]) -> list[Verification]:
    live = _teachers(reader, specs, allow_pickle)
    paths = {c.id: c.path for c in manifest.clips}
    out = []
    for name, teacher in live.items():
        # Only clips that have logits and that the manifest can locate can be rerun.
        candidates = [c for c, have in zip(reader.clip_ids, reader.written(name)) if have and c in paths]
        if not candidates:
            raise UserError(f"no clip of the manifest has logits from teacher '{name}' in {reader.path}; "
                            f"nothing to verify")
        rng = random.Random(seed)
        picked = rng.sample(candidates, min(n, len(candidates)))
        views = [rng.randrange(reader.views) for _ in picked]
        what = f"cached views of {len(picked)} clips" if reader.augmented else f"{len(picked)} cached clips"
        log(f"rerunning teacher '{name}' on {what}")
        teacher.to(device).eval()
        clips, fresh, unreadable = [], [], []
        spec = ViewSpec.from_dict(reader.augment) if reader.augmented else None
        for clip_id, view in zip(picked, views):
            try:
                fresh.append(_rerun(teacher, reader, clip_id, view, paths, spec))
                clips.append((clip_id, view))
            except AudioError:
                unreadable.append(clip_id)
        if not clips:
            raise UserError(f"none of the {len(picked)} picked clips could be read; check the manifest's paths")
        live_logits = np.stack(fresh)
        ids, vs = [c for c, _ in clips], [v for _, v in clips]
        stored, live = _comparable(reader, name, ids, vs, live_logits)
        diff = np.abs(live - stored)
        excess = np.maximum(diff - np.abs(stored) * FP16_RELATIVE, 0.0)
        out.append(Verification(name, ids, float(diff.max()), float(excess.max()), atol, unreadable))
    return out


def _rerun(teacher: Teacher, reader: LogitCacheReader, clip_id: str, view: int, paths: dict[str, Path],
           spec: ViewSpec | None) -> np.ndarray:
    """The teacher's logits for one cached clip, or for one cached view replayed from its parameters."""
    wave = read_audio(paths[clip_id], teacher.sample_rate)
    if spec is None:
        return teacher_logits(teacher, [{"waves": {teacher.sample_rate: wave}}], None, batch_size=1)[0]
    p = reader.view_params([clip_id], [view])[0]
    partner = None
    if int(p["partner"]) >= 0:
        pid = reader.clip_id(int(p["partner"]))
        if pid not in paths:
            raise AudioError(f"view {view} of {clip_id} mixes in {pid}, which the manifest does not locate")
        partner = read_audio(paths[pid], teacher.sample_rate)
    one = dataclasses.replace(spec, count=1)  # exactly the caching path, for this one view
    item = {"params": p[None], "views": {teacher.sample_rate: [render_view(wave, partner, p, teacher.sample_rate, spec)]}}
    return teacher_logits(teacher, [item], one, batch_size=1)[0, 0]


def _comparable(reader: LogitCacheReader, name: str, ids: list[str], views: list[int],
                live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stored, live) on what the cache keeps: every logit (dense), or the top-k classes and the rest value."""
    storage = reader.storage(name)
    if storage.kind == "dense":
        return reader.get(ids, name, views=views), live
    stored = reader.get_encoded(ids, name, views)
    idx = unpack_indices(stored["topk_indices"], storage.k, index_bits(reader.num_classes))
    live_rest = rest_logit(live, idx)  # the rest rule on the live logits of the classes not kept
    return (np.concatenate([stored["topk_values"].astype(np.float32), stored["topk_rest"].astype(np.float32)[:, None]], 1),
            np.concatenate([np.take_along_axis(live, idx, 1), live_rest.astype(np.float32)[:, None]], 1))


def _teachers(reader: LogitCacheReader, specs: list[str] | None, allow_pickle: bool) -> dict[str, Teacher]:
    """The cache's teachers, live: from ``specs`` when given (checked by sha256), else from
    the checkpoint path each provenance records, with the recorded long-clip policy."""
    live: dict[str, Teacher] = {}
    if specs:
        loaded: list[Teacher] = []
        for spec in specs:
            t = load_teacher(spec, allow_pickle=allow_pickle)
            loaded.extend(t.members if isinstance(t, Ensemble) else [t])
        for t in loaded:
            match = [n for n in reader.teachers if reader.provenance(n).get("checkpoint_sha256") == t.checkpoint_sha256]
            if not match:
                raise UserError(f"teacher {t.checkpoint} (sha256 {t.checkpoint_sha256[:12]}) made none of the logits "
                                f"in {reader.path}; its teachers: "
                                + ", ".join(f"{n} ({reader.provenance(n).get('checkpoint_sha256', '')[:12]})"
                                            for n in reader.teachers))
            for name in match:
                live[name] = t.set_clip_policy(_policy(reader.provenance(name)))
        return live
    for name in reader.teachers:
        prov = reader.provenance(name)
        path = prov.get("checkpoint")
        if not path or not Path(path).exists():
            raise UserError(f"teacher '{name}' was loaded from {path!r}, which is not here; pass it with "
                            f"--teacher {prov.get('kind', 'KIND')}:PATH")
        t = load_teacher(f"{prov['kind']}:{path}", name=name, allow_pickle=allow_pickle,
                         clip_policy=_policy(prov))
        if t.checkpoint_sha256 != prov.get("checkpoint_sha256"):
            raise UserError(f"{path} has changed since the cache was made (sha256 {t.checkpoint_sha256[:12]}, "
                            f"cache says {str(prov.get('checkpoint_sha256'))[:12]}); the cache no longer matches it")
        live[name] = t
    return live


def _policy(prov: dict) -> ClipPolicy:
    """The long-clip policy the cache recorded for a teacher (its logits depend on it)."""
    clips = prov.get("clips") or {}
    if clips.get("long") == "truncate":
        return ClipPolicy(long="truncate")
    return ClipPolicy(long="windows", hop_seconds=clips.get("hop_seconds") or 5.0,
                      aggregate=clips.get("aggregate") or "mean")
