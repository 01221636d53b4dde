"""``dass-distill cache``: run teachers over a manifest once and store their logits."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dass_distill import __version__
from dass_distill.console import console, make_progress
from dass_distill.data.dataset import WaveformDataset, collate_waves
from dass_distill.data.manifest import Manifest
from dass_distill.errors import UserError
from dass_distill.logit_cache import LogitCacheWriter
from dass_distill.teachers import Ensemble, Teacher


@dataclass
class CacheReport:
    path: Path
    clips: int
    written: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)


def check_teacher_labels(teacher: Teacher, manifest: Manifest) -> None:
    """A teacher's outputs must be the manifest's classes: by id when the checkpoint names
    them, else (released checkpoints carry no names) by count, taken in the label map's order."""
    lm = manifest.label_map
    if teacher.label_ids is None:
        if teacher.num_classes != len(lm):
            raise UserError(
                f"teacher '{teacher.name}' predicts {teacher.num_classes} classes but the label map has {len(lm)}; "
                f"pass the class_labels_indices.csv the teacher was trained with (--label-map)"
            )
    elif list(teacher.label_ids) != list(lm.ids):
        raise UserError(
            f"teacher '{teacher.name}' predicts {teacher.num_classes} classes that differ from the manifest's "
            f"label map ({len(lm)} classes); use the label map the teacher was trained with"
        )


def expand_teachers(teachers: list[Teacher | Ensemble]) -> tuple[list[Teacher], dict[str, dict]]:
    """Ensembles -> their members (cached one by one); returns members and their ensemble records."""
    flat: list[Teacher] = []
    ensemble_of: dict[str, dict] = {}
    for t in teachers:
        if isinstance(t, Ensemble):
            for m in t.members:
                ensemble_of[m.name] = t.identity()
            flat.extend(t.members)
        else:
            flat.append(t)
    return flat, ensemble_of


def build_cache(
    teachers: list[Teacher | Ensemble],
    manifest: Manifest,
    out: Path,
    batch_size: int = 16,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    command: str | None = None,
    layout: str = "contiguous",
) -> CacheReport:
    """Write each teacher's logits for every readable clip of ``manifest`` to ``out``.

    Clips that cannot be decoded are skipped, recorded in the file's failed list and
    reported; the file appears at ``out`` only when every teacher has finished. An
    ensemble's members are stored as teachers of their own, each recording the
    ensemble in its provenance, so the combination stays a training-time choice.
    ``layout``: ``contiguous`` (memory-mapped random reads) or ``chunked`` (LZF chunks).
    """
    teachers, ensemble_of = expand_teachers(teachers)
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise UserError(f"teacher names must be unique, got {names}; name them in a teacher YAML file")
    for t in teachers:
        check_teacher_labels(t, manifest)
    provenance = {
        t.name: {**t.identity(), "manifest": str(manifest.source) if manifest.source else None,
                 "ensemble": ensemble_of.get(t.name), "device": str(device),
                 "precision": str(t.cuda_dtype).removeprefix("torch.") if torch.device(device).type == "cuda"
                 and t.cuda_dtype is not None else "float32"}
        for t in teachers
    }
    lm = manifest.label_map
    failed: dict[str, str] = {}
    written = {t.name: 0 for t in teachers}
    with LogitCacheWriter(
        out, manifest.ids, list(lm.ids), list(lm.names), provenance,
        command=command if command is not None else shlex.join(["dass-distill", *sys.argv[1:]]),
        toolkit_version=__version__,
        **({"layout": "contiguous", "compression": None} if layout == "contiguous" else {}),
    ) as writer, make_progress() as progress:
        for teacher in teachers:
            teacher.to(device).eval()
            loader = DataLoader(WaveformDataset(manifest, teacher.sample_rate), batch_size=batch_size,
                                num_workers=num_workers, collate_fn=collate_waves)
            task = progress.add_task(f"cache {teacher.name}", total=len(manifest))
            for ids, waves, errors in loader:
                for clip_id, reason in errors:
                    if clip_id not in failed:
                        failed[clip_id] = reason
                        writer.add_failed(clip_id, reason)
                if ids:
                    writer.write(teacher.name, ids, teacher.logits(waves).cpu().numpy())
                    written[teacher.name] += len(ids)
                progress.advance(task, len(ids) + len(errors))
    if failed:
        console.print(f"[yellow]{len(failed)} clip(s) could not be read and are not in the cache:")
        for clip_id, reason in failed.items():
            console.print(f"  [yellow]{clip_id}[/]: {reason}")
    return CacheReport(out, len(manifest), written, failed)
