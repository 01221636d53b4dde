"""``dass-distill cache``: run teachers over a manifest once and store their logits.

Sharded, resumable and crash-safe: the clips are cut into fixed blocks of rows; each
process (one, or several under torchrun / the deepspeed launcher) takes every
``world``-th unfinished block, runs every teacher on it and saves the block as one
segment file in ``OUT.parts/`` (written to a temporary name, fsynced, renamed). A killed
run leaves only whole segments; rerunning the same command skips them. When every block
is done, rank 0 merges the segments into ``OUT`` (``.partial`` then an atomic rename)
and removes the parts folder. Blocks and the batches inside them do not depend on the
number of processes or on where a run was interrupted, so the merged file is the same.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from torch.utils.data import DataLoader, Dataset

from dass_distill import __version__
from dass_distill.console import console, make_progress
from dass_distill.data.audio import AudioError, read_audio
from dass_distill.data.manifest import Manifest
from dass_distill.data.views import ViewSpec, draw_views, render_view, spec_mask, without_mixup
from dass_distill.errors import UserError
from dass_distill.logit_cache import LogitCacheWriter
from dass_distill.logit_cache.format import VIEW_PARAMS_DTYPE
from dass_distill.logit_cache.storage import Storage, storage_from_spec
from dass_distill.teachers import Ensemble, Teacher

#: Clips per block (and per segment file) unless the caller says otherwise.
DEFAULT_BLOCK_CLIPS = 512
JOB_FILE = "job.json"


@dataclass
class CacheReport:
    path: Path
    clips: int
    written: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)
    resumed_blocks: int = 0


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


# --------------------------------------------------------------------------- data
class BlockItems(Dataset):
    """Decoded audio of one clip at every teacher sample rate; with views, its rendered views.

    Items: ``{"row", "id", "waves": {rate: wave}}``, with views also ``"params"`` (V,) and
    ``"views": {rate: [V waves]}``; or ``{"row", "id", "error"}`` for unreadable audio.
    """

    def __init__(self, manifest: Manifest, rates: list[int], views: ViewSpec | None) -> None:
        self.manifest = manifest
        self.rates = sorted(set(rates))
        self.views = views

    def __len__(self) -> int:
        return len(self.manifest)

    def _read(self, row: int) -> dict[int, torch.Tensor]:
        path = self.manifest.clips[row].path
        return {rate: read_audio(path, rate) for rate in self.rates}

    def __getitem__(self, row: int) -> dict:
        clip_id = self.manifest.clips[row].id
        try:
            waves = self._read(row)
        except AudioError as e:
            return {"row": row, "id": clip_id, "error": str(e)}
        item = {"row": row, "id": clip_id, "waves": waves}
        if self.views is None:
            return item
        params = draw_views(self.views, row, len(self.manifest))
        partners: dict[int, dict[int, torch.Tensor] | None] = {}
        for v in range(len(params)):
            p = int(params[v]["partner"])
            if p < 0:
                continue
            if p not in partners:
                try:
                    partners[p] = self._read(p)
                except AudioError:
                    partners[p] = None  # the view is kept, without mixup (its params say so)
            if partners[p] is None:
                params[v] = without_mixup(params[v: v + 1])[0]
        item["params"] = params
        item["views"] = {
            rate: [render_view(waves[rate], (partners.get(int(pv["partner"])) or {}).get(rate), pv, rate, self.views)
                   for pv in params]
            for rate in self.rates
        }
        del item["waves"]
        return item


def _collate(items: list[dict]) -> list[dict]:
    return items


def block_batches(rows: list[int], batch_size: int) -> list[list[int]]:
    """Batches of at most ``batch_size`` consecutive rows of one block (block-aligned)."""
    return [rows[i: i + batch_size] for i in range(0, len(rows), batch_size)]


# --------------------------------------------------------------------------- teachers on a batch
def teacher_logits(teacher: Teacher, items: list[dict], views: ViewSpec | None, batch_size: int) -> np.ndarray:
    """(B, C) logits of whole clips (long-clip policy), or (B, V, C) logits of their views."""
    rate = teacher.sample_rate
    if views is None:
        return teacher.logits([it["waves"][rate] for it in items]).cpu().numpy()
    window = teacher.window_samples
    waves = [w[:window] for it in items for w in it["views"][rate]]
    masks = [spec_mask(p, views) for it in items for p in it["params"]]
    out = []
    with torch.inference_mode():
        for i in range(0, len(waves), batch_size):
            chunk = [w.to(teacher.device) for w in waves[i: i + batch_size]]
            out.append(teacher.window_logits(chunk, masks=masks[i: i + batch_size]).float().cpu())
    return torch.cat(out).numpy().reshape(len(items), views.count, -1)


# --------------------------------------------------------------------------- segments
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_segment(parts: Path, name: str, rows: np.ndarray, data: dict[str, dict[str, np.ndarray]],
                 params: np.ndarray | None, failed: dict[int, str]) -> Path:
    """Write one block's results atomically: a temporary file, fsync, rename, fsync the folder."""
    arrays: dict[str, np.ndarray] = {"rows": rows.astype(np.int64)}
    for t, encoded in data.items():
        for k, a in encoded.items():
            arrays[f"t/{t}/{k}"] = a
    if params is not None:
        arrays["params"] = params
    arrays["failed_rows"] = np.array(sorted(failed), dtype=np.int64)
    arrays["failed_reasons"] = np.array([failed[r] for r in sorted(failed)], dtype=np.str_)
    final = parts / f"{name}.npz"
    tmp = parts / f"{name}.tmp.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(parts)
    return final


def load_segment(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def segment_files(parts: Path) -> list[Path]:
    return sorted(p for p in parts.glob("block-*.npz") if not p.name.endswith(".tmp.npz"))


# --------------------------------------------------------------------------- processes
def _dist() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun or deepspeed); (0, 1) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        # Long timeout: ranks wait for each other at the merge, however long the teachers take.
        torch.distributed.init_process_group("gloo", timeout=_dt.timedelta(days=7))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def job_record(manifest: Manifest, provenance: dict[str, dict], views: ViewSpec | None, storage: Storage,
               layout: str, batch_size: int, block_clips: int) -> dict:
    """What a rerun must match to resume: clips, teachers, views, storage and batching
    (not where the manifest file lies or which GPU index a process had)."""
    ids_sha = hashlib.sha256("\n".join(manifest.ids).encode()).hexdigest()
    teachers = {n: {k: v for k, v in p.items() if k not in ("device", "manifest")} for n, p in provenance.items()}
    return {
        "clips": len(manifest), "clip_ids_sha256": ids_sha, "label_ids": list(manifest.label_map.ids),
        "teachers": teachers, "views": views.to_dict() if views else None, "storage": storage.describe(),
        "layout": layout, "batch_size": batch_size, "block_clips": block_clips,
    }


def _prepare_parts(parts: Path, job: dict, rank: int, world: int, command: str) -> dict:
    """Create or check the parts folder's job record; returns it (with the first run's time)."""
    path = parts / JOB_FILE
    if rank == 0:
        parts.mkdir(parents=True, exist_ok=True)
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
            if old is None or old.get("job") != job:
                what = "unreadable" if old is None else "from a different run (other clips, teachers, views, storage or batching)"
                raise UserError(f"{parts} holds partial results {what}; rerun with the options that made them, "
                                f"or delete {parts} to start over")
        else:
            record = {"job": job, "created_utc": _utc_now(), "command": command}
            tmp = parts / (JOB_FILE + ".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, path)
            _fsync_dir(parts)
        for stale in parts.glob("*.tmp.npz"):  # a killed run's unfinished segment
            stale.unlink()
    _barrier(world)
    return json.loads(path.read_text())


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_cache(
    teachers: list[Teacher | Ensemble],
    manifest: Manifest,
    out: Path,
    batch_size: int = 16,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    command: str | None = None,
    layout: str = "contiguous",
    views: ViewSpec | None = None,
    storage: str | Storage = "dense",
    block_clips: int = DEFAULT_BLOCK_CLIPS,
) -> CacheReport:
    """Write each teacher's logits for every readable clip of ``manifest`` to ``out``.

    ``views``: K augmented views per clip (replayable, see ``data/views.py``) instead of
    the whole clip. ``storage``: ``dense`` or ``topk:K``. Runs as one process, or as one
    of several started by torchrun / the deepspeed launcher (``WORLD_SIZE`` > 1); then
    each process takes its share of blocks and rank 0 merges. Interrupted runs resume from
    ``OUT.parts/``. Unreadable clips are recorded in the file's failed list and reported.
    """
    out = Path(out)
    teachers, ensemble_of = expand_teachers(teachers)
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise UserError(f"teacher names must be unique, got {names}; name them in a teacher YAML file")
    for t in teachers:
        check_teacher_labels(t, manifest)
    if block_clips < 1:
        raise UserError(f"block size must be at least 1 clip, got {block_clips}")
    try:
        storage = storage if not isinstance(storage, str) else storage_from_spec(storage)
        storage.datasets(len(manifest.label_map))
    except ValueError as e:
        raise UserError(f"--storage: {e}") from None
    rank, world = _dist()
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    provenance = {
        t.name: {**t.identity(), "manifest": str(manifest.source) if manifest.source else None,
                 "ensemble": ensemble_of.get(t.name), "device": str(dev),
                 "precision": str(t.cuda_dtype).removeprefix("torch.") if dev.type == "cuda"
                 and t.cuda_dtype is not None else "float32",
                 **({"views": "augmented views (see /views)"} if views else {})}
        for t in teachers
    }
    command = command if command is not None else shlex.join(["dass-distill", *sys.argv[1:]])
    parts = Path(str(out) + ".parts")
    job = job_record(manifest, provenance, views, storage, layout, batch_size, block_clips)
    record = _prepare_parts(parts, job, rank, world, command)

    n = len(manifest)
    done_rows = np.zeros(n, dtype=bool)
    segments = segment_files(parts)
    for seg in segments:
        done_rows[load_segment(seg)["rows"]] = True
    blocks = [list(range(s, min(s + block_clips, n))) for s in range(0, n, block_clips)]
    todo = [b for b in blocks if not done_rows[b[0]]]
    mine = todo[rank::world]
    _barrier(world)  # every rank has listed the finished segments before anyone adds new ones
    if segments and rank == 0:
        console.print(f"resuming: {len(blocks) - len(todo)} of {len(blocks)} blocks already done in {escape(str(parts))}")

    for t in teachers:
        t.to(dev).eval()
    rates = [t.sample_rate for t in teachers]
    dataset = BlockItems(manifest, rates, views)
    batches = [batch for block in mine for batch in block_batches(block, batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate)
    with make_progress(disable=rank != 0) as progress:
        task = progress.add_task(f"cache {'+'.join(names)}" + (f" (rank 0 of {world})" if world > 1 else ""),
                                 total=sum(len(b) for b in mine))
        pending: list[dict] = []
        remaining = {b[0]: len(b) for b in mine}
        block_of = {r: b[0] for b in mine for r in b}
        results: dict[str, list[np.ndarray]] = {t.name: [] for t in teachers}
        for items in loader:
            good = [it for it in items if "error" not in it]
            if good:
                for t in teachers:
                    results[t.name].append(teacher_logits(t, good, views, batch_size))
            pending.extend(items)
            first = block_of[items[0]["row"]]
            remaining[first] -= len(items)
            progress.advance(task, len(items))
            if remaining[first] == 0:
                _flush_block(parts, first, pending, results, teachers, storage, views)
                pending, results = [], {t.name: [] for t in teachers}
    _barrier(world)
    if rank != 0:
        return CacheReport(out, n, {}, {})
    report = merge_segments(parts, out, manifest, provenance, views, storage, layout, record)
    report.resumed_blocks = len(blocks) - len(todo)
    if report.failed:
        console.print(f"[yellow]{len(report.failed)} clip(s) could not be read and are not in the cache:")
        for clip_id, reason in report.failed.items():
            console.print(f"  [yellow]{escape(clip_id)}[/]: {escape(str(reason))}")
    return report


def _flush_block(parts: Path, first: int, items: list[dict], results: dict[str, list[np.ndarray]],
                 teachers: list[Teacher], storage: Storage, views: ViewSpec | None) -> None:
    good = [it for it in items if "error" not in it]
    rows = np.array([it["row"] for it in good], dtype=np.int64)
    data = {}
    for t in teachers:
        logits = np.concatenate(results[t.name]) if results[t.name] else np.zeros((0, t.num_classes), np.float32)
        if views is None:
            logits = logits[:, None]
        data[t.name] = storage.encode(logits.reshape(len(rows), views.count if views else 1, logits.shape[-1]))
    params = np.stack([it["params"] for it in good]) if views and good else (
        np.zeros((0, views.count), VIEW_PARAMS_DTYPE) if views else None)
    failed = {it["row"]: it["error"] for it in items if "error" in it}
    # Name by the block's first row: a block is done once, whoever does it.
    save_segment(parts, f"block-{first:010d}", rows, data, params, failed)


def merge_segments(parts: Path, out: Path, manifest: Manifest, provenance: dict[str, dict], views: ViewSpec | None,
                   storage: Storage, layout: str, record: dict) -> CacheReport:
    """Merge every segment of ``parts`` into ``out`` (atomic), then delete ``parts``."""
    lm = manifest.label_map
    failed: dict[str, str] = {}
    written = {t: 0 for t in provenance}
    seen = np.zeros(len(manifest), dtype=bool)
    ids = manifest.ids
    started = time.perf_counter()
    with LogitCacheWriter(
        out, ids, list(lm.ids), list(lm.names), provenance,
        command=record.get("command", ""), toolkit_version=__version__, created_utc=record.get("created_utc"),
        views=views.count if views else 1, augment=views.to_dict() if views else None, storage=storage,
        **({"layout": "contiguous", "compression": None} if layout == "contiguous" else {}),
    ) as writer:
        for seg in segment_files(parts):
            z = load_segment(seg)
            rows = z["rows"]
            if seen[rows].any() or seen[z["failed_rows"]].any():
                raise UserError(f"{seg} repeats clips of another segment; two runs wrote {parts} at once? "
                                f"delete {parts} and run again")
            seen[rows] = True
            seen[z["failed_rows"]] = True
            clip_ids = [ids[r] for r in rows.tolist()]
            for t in provenance:
                encoded = {k.split("/", 2)[2]: v for k, v in z.items() if k.startswith(f"t/{t}/")}
                writer.write_encoded(t, clip_ids, encoded, z.get("params"))
                written[t] += len(rows)
            for r, reason in zip(z["failed_rows"].tolist(), z["failed_reasons"].tolist()):
                failed[ids[r]] = reason
                writer.add_failed(ids[r], reason)
        missing = int((~seen).sum())
        if missing:
            raise UserError(f"{missing} clips are in no segment of {parts}; rerun the same command to finish them")
    shutil.rmtree(parts, ignore_errors=True)
    console.print(f"[dim]merged {escape(parts.name)} into {escape(out.name)} in {time.perf_counter() - started:.1f} s")
    return CacheReport(out, len(manifest), written, dict(sorted(failed.items(), key=lambda kv: manifest.ids.index(kv[0]))))
