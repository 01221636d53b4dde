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

#: Target size of one logits chunk (uncompressed). 256 KiB is 248 rows of 527 fp16 logits.
TARGET_CHUNK_BYTES = 256 * 1024
#: Rows per chunk of the small per-teacher ``written`` mask.
WRITTEN_CHUNK_ROWS = 64 * 1024
#: HDF5 attributes in the default (compact) layout are limited to 64 KiB.
MAX_PROVENANCE_BYTES = 60_000

_COMPRESSIONS = ("lzf", "gzip", None)
_GZIP_LEVEL = 4
_FP16_MAX = float(np.finfo(np.float16).max)


def default_chunk_rows(num_rows: int, num_classes: int) -> int:
    """Rows per logits chunk: about :data:`TARGET_CHUNK_BYTES` of fp16, never more than ``num_rows``."""
    rows = max(1, TARGET_CHUNK_BYTES // (2 * max(1, num_classes)))
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


def _members(name: str, provenance: Mapping[str, Any]) -> list[str]:
    members = provenance.get("members")
    if members is None:
        return [name]
    if isinstance(members, (str, bytes)) or not all(isinstance(m, str) for m in members):
        raise ValueError(f"teacher {name!r}: provenance['members'] must be a list of member names")
    return list(members)


class LogitCacheWriter:
    """Create a logit cache at ``path`` (see FORMAT.md).

    Data goes to ``path + ".partial"``; :meth:`close` renames it to ``path`` atomically,
    so a file at ``path`` is always a finished cache. If the ``with`` block raises, the
    handle is closed and the ``.partial`` file is left for inspection (never renamed).

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
            try:
                text = json.dumps(dict(prov), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"teacher {name!r}: provenance is not JSON-serialisable ({e})") from None
            if len(text.encode("utf-8")) > MAX_PROVENANCE_BYTES:
                raise ValueError(f"teacher {name!r}: provenance is larger than {MAX_PROVENANCE_BYTES} bytes as JSON")
            prov_json[name] = text
            members[name] = _members(name, prov)
        if compression == "none":
            compression = None
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be one of 'lzf', 'gzip', 'none' or None; got {compression!r}")
        if layout not in ("chunked", "contiguous"):
            raise ValueError(f"layout must be 'chunked' or 'contiguous'; got {layout!r}")
        if layout == "contiguous" and compression is not None:
            raise ValueError("a contiguous layout cannot be compressed; pass compression=None (or 'none')")
        n, c = len(clips), len(lids)
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(n, c)
        elif not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer; got {chunk_rows!r}")
        chunk_rows = int(min(chunk_rows, n))

        self._clip_ids = clips
        self._index = index
        self._num_classes = c
        self._teachers = list(teachers)
        self._written = {t: np.zeros(n, dtype=bool) for t in self._teachers}
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
            f.attrs[fmt.ATTR_CREATED_UTC] = _utc_now()
            f.attrs[fmt.ATTR_COMMAND] = str(command)
            sdt = h5py.string_dtype()
            f.create_dataset(fmt.CLIPS_ID, data=np.array(clips, dtype=object), dtype=sdt)
            f.create_dataset(fmt.LABEL_IDS, data=np.array(lids, dtype=object), dtype=sdt)
            f.create_dataset(fmt.LABEL_NAMES, data=np.array(lnames, dtype=object), dtype=sdt)
            for key in (fmt.FAILED_ID, fmt.FAILED_REASON):
                f.create_dataset(key, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=sdt)
            copts = {"compression": compression}
            if compression == "gzip":
                copts["compression_opts"] = _GZIP_LEVEL
            self._logits: dict[str, h5py.Dataset] = {}
            self._written_ds: dict[str, h5py.Dataset] = {}
            for name in self._teachers:
                g = f.create_group(f"{fmt.TEACHERS}/{name}")
                g.attrs[fmt.ATTR_PROVENANCE] = prov_json[name]
                g.attrs[fmt.ATTR_MEMBERS] = json.dumps(members[name], ensure_ascii=False)
                self._logits[name] = g.create_dataset(
                    fmt.LOGITS,
                    shape=(n, c),
                    dtype=np.float16,
                    fillvalue=np.float16(np.nan),
                    **({"chunks": (chunk_rows, c), **copts} if layout == "chunked" else {}),
                )
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
        self.chunk_rows = chunk_rows
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
        return rows

    def write(self, teacher: str, clip_ids: Sequence[str], logits: np.ndarray) -> None:
        """Store raw (pre-sigmoid) ``logits`` of shape (len(clip_ids), C) for ``teacher``, as fp16.

        Writing a clip again for the same teacher replaces its row.
        """
        self._check_open()
        if teacher not in self._logits:
            raise KeyError(f"unknown teacher {teacher!r}; this cache was created for {self._teachers}")
        rows = self._rows(clip_ids)
        ids = list(clip_ids)
        arr = np.asarray(logits)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"logits must be a real-valued numeric array; got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape != (len(rows), self._num_classes):
            raise ValueError(
                f"logits shape {arr.shape} does not match (len(clip_ids), num_classes) = "
                f"({len(rows)}, {self._num_classes})"
            )
        if len(np.unique(rows)) != len(rows):
            seen: set[str] = set()
            dup = next(c for c in ids if c in seen or seen.add(c))  # type: ignore[func-returns-value]
            raise ValueError(f"clip id {dup!r} appears twice in one write call")
        if len(rows) == 0:
            return
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"non-finite logits (NaN or inf) for clip {ids[i]!r} (teacher {teacher!r}); "
                f"{int(bad.sum())} of {len(rows)} clips in this batch are affected"
            )
        with np.errstate(over="ignore"):
            half = arr.astype(np.float16)
        over = ~np.isfinite(half).all(axis=1)
        if over.any():
            i = int(np.flatnonzero(over)[0])
            raise ValueError(
                f"logits for clip {ids[i]!r} (teacher {teacher!r}) exceed the float16 range "
                f"(|x| > {_FP16_MAX:g}): max |x| = {float(np.abs(arr[i]).max()):g}"
            )
        order = np.argsort(rows, kind="stable")
        srows, shalf = rows[order], half[order]
        ds = self._logits[teacher]
        # Contiguous runs of rows are written as slices (one write for an in-order batch).
        breaks = np.flatnonzero(np.diff(srows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(srows)]):
            ds[srows[start] : srows[stop - 1] + 1] = shalf[start:stop]
        mask = self._written[teacher]
        mask[rows] = True
        lo, hi = int(srows[0]), int(srows[-1]) + 1
        self._written_ds[teacher][lo:hi] = mask[lo:hi].astype(np.uint8)

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
        ids = list(self._failed)
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
