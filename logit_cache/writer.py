"""Writing a logit cache: one pass over the clips, any order, crash-safe finish."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import format as fmt
from .storage import DenseStorage, Storage, TopKStorage, storage_from_spec

#: Target size of one logits chunk (uncompressed). 256 KiB is 248 rows of 527 fp16 logits.
TARGET_CHUNK_BYTES = 256 * 1024
#: Rows per chunk of the small per-teacher ``written`` mask.
WRITTEN_CHUNK_ROWS = 64 * 1024
#: HDF5 attributes in the default (compact) layout are limited to 64 KiB.
MAX_PROVENANCE_BYTES = 60_000

_COMPRESSIONS = ("lzf", "gzip", None)
_GZIP_LEVEL = 4
_FP16_MAX = float(np.finfo(np.float16).max)


def default_chunk_rows(num_rows: int, row_bytes: int) -> int:
    """Clip rows per chunk: about :data:`TARGET_CHUNK_BYTES` uncompressed, never more than ``num_rows``."""
    rows = max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))
    return max(1, min(rows, num_rows))


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _check_strings(kind: str, values: Sequence[str]) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{kind} must be a sequence of strings, not a single {type(values).__name__}")
    out = list(values)
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{kind} must be strings; got {type(v).__name__} {v!r}")
    return out


def _json(value: Mapping[str, Any], what: str) -> str:
    """A dict as compact JSON for an HDF5 attribute (bounded, no NaN)."""
    try:
        text = json.dumps(dict(value), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable ({e})") from None
    if len(text.encode("utf-8")) > MAX_PROVENANCE_BYTES:
        raise ValueError(f"{what} is larger than {MAX_PROVENANCE_BYTES} bytes as JSON")
    return text


def _members(name: str, provenance: Mapping[str, Any]) -> list[str]:
    members = provenance.get("members")
    if members is None:
        return [name]
    if isinstance(members, (str, bytes)) or not all(isinstance(m, str) for m in members):
        raise ValueError(f"teacher {name!r}: provenance['members'] must be a list of member names")
    return list(members)


class LogitCacheWriter:
    """Create a logit cache at ``path`` (format version 2, see FORMAT.md).

    Data goes to ``path + ".partial"``; :meth:`close` renames it to ``path`` atomically,
    so a file at ``path`` is always a finished cache. If the ``with`` block raises, the
    handle is closed and the ``.partial`` file is left for inspection (never renamed).

    Each clip has ``views`` views (1 = the clip as is). With ``augment`` (a JSON-able
    description of how views were drawn), the views are augmented and every written clip
    needs its replay parameters (:data:`~dass_distill.logit_cache.format.VIEW_PARAMS_DTYPE`,
    shape (views,)), shared by all teachers. ``storage`` is ``"dense"`` or ``"topk:K"``.

    Rows may be written in any order, in batches, per teacher. Clips whose audio could not
    be processed are recorded with :meth:`add_failed`. Rows that end up neither written nor
    failed are not an error at close; :meth:`missing` lists them, and readers see them as
    unwritten (``get`` raises ``KeyError``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        clip_ids: Sequence[str],
        label_ids: Sequence[str],
        label_names: Sequence[str],
        teachers: Mapping[str, dict],
        *,
        command: str = "",
        toolkit_version: str = "",
        compression: str | None = "lzf",
        chunk_rows: int | None = None,
        layout: str = "chunked",
        views: int = 1,
        augment: Mapping[str, Any] | None = None,
        storage: Storage | str | int | None = "dense",
        created_utc: str | None = None,
    ) -> None:
        self.path = Path(os.fspath(path))
        self.partial_path = Path(os.fspath(path) + fmt.PARTIAL_SUFFIX)

        clips = _check_strings("clip_ids", clip_ids)
        if not clips:
            raise ValueError("clip_ids is empty: a logit cache needs at least one clip")
        index: dict[str, int] = {}
        for row, cid in enumerate(clips):
            if cid in index:
                raise ValueError(f"duplicate clip id {cid!r} (rows {index[cid]} and {row}); clip ids must be unique")
            index[cid] = row
        lids = _check_strings("label_ids", label_ids)
        lnames = _check_strings("label_names", label_names)
        if not lids:
            raise ValueError("label_ids is empty: a logit cache needs at least one class")
        if len(lids) != len(lnames):
            raise ValueError(f"label_ids has {len(lids)} entries but label_names has {len(lnames)}")
        if len(set(lids)) != len(lids):
            dup = next(x for x in lids if lids.count(x) > 1)
            raise ValueError(f"duplicate label id {dup!r} in label_ids")
        if not isinstance(teachers, Mapping) or not teachers:
            raise ValueError("teachers is empty: pass {teacher_name: provenance_dict} for at least one teacher")
        prov_json: dict[str, str] = {}
        members: dict[str, list[str]] = {}
        for name, prov in teachers.items():
            fmt.check_teacher_name(name)
            if not isinstance(prov, Mapping):
                raise TypeError(f"teacher {name!r}: provenance must be a dict, got {type(prov).__name__}")
            prov_json[name] = _json(prov, f"teacher {name!r}: provenance")
            members[name] = _members(name, prov)
        if compression == "none":
            compression = None
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of 'lzf', 'gzip', 'none' or None; got {compression!r}")
        if layout not in ("chunked", "contiguous"):
            raise ValueError(f"layout must be 'chunked' or 'contiguous'; got {layout!r}")
        if layout == "contiguous" and compression is not None:
            raise ValueError("a contiguous layout cannot be compressed; pass compression=None (or 'none')")
        if not isinstance(views, (int, np.integer)) or isinstance(views, bool) or views < 1:
            raise ValueError(f"views must be a positive integer; got {views!r}")
        if views > 1 and augment is None:
            raise ValueError("several views per clip need augment= (how the views were drawn); "
                             "without augmentation every view would be the same clip")
        augment_json = _json(augment, "augment") if augment is not None else None
        if not isinstance(storage, (DenseStorage, TopKStorage)):
            storage = storage_from_spec(storage)
        n, c, v = len(clips), len(lids), int(views)
        specs = storage.datasets(c)  # raises for an impossible k
        if chunk_rows is not None and (not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1):
            raise ValueError(f"chunk_rows must be a positive integer; got {chunk_rows!r}")

        self._clip_ids = clips
        self._index = index
        self._num_classes = c
        self._views = v
        self._augmented = augment is not None
        self._storage = storage
        self._teachers = list(teachers)
        self._written = {t: np.zeros(n, dtype=bool) for t in self._teachers}
        self._params_written = np.zeros(n, dtype=bool)
        self._failed: dict[str, str] = {}
        self._closed = False
        self._finished = False

        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.partial_path, "w")
        self._f = f
        try:
            f.attrs[fmt.ATTR_FORMAT] = fmt.FORMAT_NAME
            f.attrs[fmt.ATTR_FORMAT_VERSION] = np.int64(fmt.FORMAT_VERSION)
            f.attrs[fmt.ATTR_TOOLKIT_VERSION] = str(toolkit_version)
            f.attrs[fmt.ATTR_CREATED_UTC] = created_utc or _utc_now()
            f.attrs[fmt.ATTR_COMMAND] = str(command)
            sdt = h5py.string_dtype()
            f.create_dataset(fmt.CLIPS_ID, data=np.array(clips, dtype=object), dtype=sdt)
            f.create_dataset(fmt.LABEL_IDS, data=np.array(lids, dtype=object), dtype=sdt)
            f.create_dataset(fmt.LABEL_NAMES, data=np.array(lnames, dtype=object), dtype=sdt)
            for key in (fmt.FAILED_ID, fmt.FAILED_REASON):
                f.create_dataset(key, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=sdt)
            copts: dict[str, Any] = {"compression": compression}
            if compression == "gzip":
                copts["compression_opts"] = _GZIP_LEVEL

            def create(group: h5py.Group, name: str, per_view: tuple[int, ...], dtype: np.dtype, fill: object):
                shape = (n, v, *per_view)
                if layout == "contiguous":
                    return group.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill)
                row_bytes = v * dtype.itemsize * int(np.prod(per_view, dtype=np.int64))
                rows = min(int(chunk_rows), n) if chunk_rows is not None else default_chunk_rows(n, row_bytes)
                return group.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill,
                                            chunks=(rows, v, *per_view), **copts)

            vg = f.create_group(fmt.VIEWS)
            vg.attrs[fmt.ATTR_VIEW_COUNT] = np.int64(v)
            vg.attrs[fmt.ATTR_AUGMENT] = augment_json if augment_json is not None else "null"
            self._params = (create(f, fmt.VIEW_PARAMS, (), fmt.VIEW_PARAMS_DTYPE, None)
                            if self._augmented else None)
            self._data: dict[str, dict[str, h5py.Dataset]] = {}
            self._written_ds: dict[str, h5py.Dataset] = {}
            for name in self._teachers:
                g = f.create_group(f"{fmt.TEACHERS}/{name}")
                g.attrs[fmt.ATTR_PROVENANCE] = prov_json[name]
                g.attrs[fmt.ATTR_MEMBERS] = json.dumps(members[name], ensure_ascii=False)
                g.attrs[fmt.ATTR_STORAGE] = json.dumps(storage.describe())
                self._data[name] = {ds: create(g, ds, pv, dt, fill) for ds, (pv, dt, fill) in specs.items()}
                self._written_ds[name] = g.create_dataset(
                    fmt.WRITTEN,
                    shape=(n,),
                    dtype=np.uint8,
                    chunks=(min(n, WRITTEN_CHUNK_ROWS),),
                    fillvalue=0,
                    **copts,
                )
        except BaseException:
            f.close()
            raise
        first = next(iter(self._data[self._teachers[0]].values()))
        self.chunk_rows = first.chunks[0] if first.chunks else None
        self.compression = compression
        self.layout = layout

    # -- properties --------------------------------------------------------------

    @property
    def clip_ids(self) -> list[str]:
        return list(self._clip_ids)

    @property
    def teachers(self) -> list[str]:
        return list(self._teachers)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def views(self) -> int:
        return self._views

    @property
    def augmented(self) -> bool:
        return self._augmented

    @property
    def storage(self) -> Storage:
        return self._storage

    # -- writing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.path}: logit cache writer is closed")

    def _rows(self, clip_ids: Sequence[str]) -> np.ndarray:
        ids = _check_strings("clip_ids", clip_ids)
        rows = np.empty(len(ids), dtype=np.int64)
        for i, cid in enumerate(ids):
            try:
                rows[i] = self._index[cid]
            except KeyError:
                raise KeyError(f"clip id {cid!r} is not in this cache's clip list") from None
        if len(np.unique(rows)) != len(rows):
            seen: set[str] = set()
            dup = next(c for c in ids if c in seen or seen.add(c))  # type: ignore[func-returns-value]
            raise ValueError(f"clip id {dup!r} appears twice in one write call")
        return rows

    def _teacher(self, teacher: str) -> None:
        if teacher not in self._data:
            raise KeyError(f"unknown teacher {teacher!r}; this cache was created for {self._teachers}")

    def write(self, teacher: str, clip_ids: Sequence[str], logits: np.ndarray, params: np.ndarray | None = None) -> None:
        """Store raw (pre-sigmoid) ``logits`` for ``teacher``: shape (B, C) with one view per clip,
        else (B, views, C). Augmented caches need each clip's view ``params`` (B, views) once
        (from any teacher; later ones must match). Writing a clip again replaces its row.
        """
        self._check_open()
        self._teacher(teacher)
        ids = list(clip_ids)
        arr = np.asarray(logits)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"logits must be a real-valued numeric array; got dtype {arr.dtype}")
        if arr.ndim == 2 and self._views == 1:
            arr = arr[:, None]
        want = (len(ids), self._views, self._num_classes)
        if arr.shape != want:
            expect = f"(len(clip_ids), num_classes) = {want[::2]}" if self._views == 1 else f"(len(clip_ids), views, num_classes) = {want}"
            raise ValueError(f"logits shape {np.asarray(logits).shape} does not match {expect}")
        bad = ~np.isfinite(arr).reshape(len(ids), -1 if ids else 0).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"non-finite logits (NaN or inf) for clip {ids[i]!r} (teacher {teacher!r}); "
                f"{int(bad.sum())} of {len(ids)} clips in this batch are affected"
            )
        big = np.abs(arr).reshape(len(ids), -1 if ids else 0).max(axis=1, initial=0) > _FP16_MAX
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise ValueError(
                f"logits for clip {ids[i]!r} (teacher {teacher!r}) exceed the float16 range "
                f"(|x| > {_FP16_MAX:g}): max |x| = {float(np.abs(arr[i]).max()):g}"
            )
        self.write_encoded(teacher, ids, self._storage.encode(arr), params)

    def write_encoded(self, teacher: str, clip_ids: Sequence[str], arrays: Mapping[str, np.ndarray],
                      params: np.ndarray | None = None) -> None:
        """Store already-encoded rows (the storage's datasets, each (B, views, ...)), e.g. from shards."""
        self._check_open()
        self._teacher(teacher)
        rows = self._rows(clip_ids)
        datasets = self._data[teacher]
        if set(arrays) != set(datasets):
            raise ValueError(f"encoded arrays {sorted(arrays)} do not match this cache's storage {sorted(datasets)}")
        for name, ds in datasets.items():
            a = arrays[name]
            if a.shape != (len(rows), *ds.shape[1:]) or a.dtype != ds.dtype:
                raise ValueError(f"{name}: got {a.shape} {a.dtype}, expected {(len(rows), *ds.shape[1:])} {ds.dtype}")
        self._store_params(rows, clip_ids, params)
        if len(rows) == 0:
            return
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        # Contiguous runs of rows are written as slices (one write for an in-order batch).
        breaks = np.flatnonzero(np.diff(srows) != 1) + 1
        runs = list(zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(srows)].tolist()))
        for name, ds in datasets.items():
            sorted_data = arrays[name][order]
            for a, b in runs:
                ds[srows[a]: srows[b - 1] + 1] = sorted_data[a:b]
        # The mask last: a crash between the two leaves logits unflagged, never flags without logits.
        mask = self._written[teacher]
        mask[rows] = True
        lo, hi = int(srows[0]), int(srows[-1]) + 1
        self._written_ds[teacher][lo:hi] = mask[lo:hi].astype(np.uint8)

    def _store_params(self, rows: np.ndarray, clip_ids: Sequence[str], params: np.ndarray | None) -> None:
        if not self._augmented:
            if params is not None:
                raise ValueError("this cache has no augmented views; do not pass params")
            return
        have = self._params_written[rows]
        if params is None:
            if not have.all():
                cid = list(clip_ids)[int(np.flatnonzero(~have)[0])]
                raise ValueError(f"clip {cid!r}: augmented views need their replay params on the first write")
            return
        p = np.asarray(params)
        if p.dtype != fmt.VIEW_PARAMS_DTYPE or p.shape != (len(rows), self._views):
            raise ValueError(f"params must be a ({len(rows)}, {self._views}) array of VIEW_PARAMS_DTYPE; "
                             f"got {p.shape} {p.dtype}")
        n = len(self._clip_ids)
        partners = p["partner"]
        if ((partners < -1) | (partners >= n)).any():
            raise ValueError(f"params: mixup partner rows must be -1 or in [0, {n})")
        if have.any():
            old = self._params[np.sort(rows[have])]
            new = p[have][np.argsort(rows[have])]
            if old.tobytes() != new.tobytes():
                raise ValueError("params differ from those stored for the same clips by another teacher: "
                                 "every teacher must see the same views")
        for r, row in zip(np.flatnonzero(~have).tolist(), rows[~have].tolist()):
            self._params[row] = p[r]
        self._params_written[rows] = True

    def add_failed(self, clip_id: str, reason: str) -> None:
        """Record that ``clip_id`` could not be processed (e.g. unreadable audio) and why."""
        self._check_open()
        if not isinstance(clip_id, str) or clip_id not in self._index:
            raise KeyError(f"clip id {clip_id!r} is not in this cache's clip list")
        self._failed[clip_id] = str(reason)

    @property
    def failed(self) -> dict[str, str]:
        return dict(self._failed)

    def missing(self, teacher: str) -> list[str]:
        """Clips (row order) neither written for ``teacher`` nor recorded as failed."""
        if teacher not in self._written:
            raise KeyError(f"unknown teacher {teacher!r}; this cache was created for {self._teachers}")
        rows = np.flatnonzero(~self._written[teacher])
        return [self._clip_ids[r] for r in rows if self._clip_ids[r] not in self._failed]

    # -- finishing ---------------------------------------------------------------

    def _flush_metadata(self) -> None:
        # Failed clips in row order, so the file does not depend on the order clips failed in.
        ids = sorted(self._failed, key=self._index.__getitem__)
        reasons = [self._failed[i] for i in ids]
        for key, values in ((fmt.FAILED_ID, ids), (fmt.FAILED_REASON, reasons)):
            ds = self._f[key]
            ds.resize((len(values),))
            if values:
                ds[:] = np.array(values, dtype=object)
        for t in self._teachers:
            self._written_ds[t][:] = self._written[t].astype(np.uint8)
        self._f.flush()

    def close(self) -> None:
        """Finish the file and rename ``.partial`` to the final path. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._flush_metadata()
        finally:
            self._f.close()
        with open(self.partial_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.partial_path, self.path)
        self._finished = True

    def abort(self) -> None:
        """Close the handle without finishing: the ``.partial`` file stays, ``path`` is untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._flush_metadata()  # best effort: make the .partial file as informative as possible
        except Exception:
            pass
        finally:
            self._f.close()

    def __enter__(self) -> LogitCacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        state = "finished" if self._finished else ("closed" if self._closed else "open")
        return f"LogitCacheWriter({str(self.path)!r}, clips={len(self._clip_ids)}, teachers={self._teachers}, {state})"
