"""Reading a logit cache: validated once, fork-safe, fast random batches."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import h5py
import numpy as np

from . import format as fmt

#: Default bound of the per-process LRU of decoded logits chunks (~16 MiB at 248 x 527 fp16).
DEFAULT_CACHE_CHUNKS = 64


def _plain(value: Any) -> Any:
    """HDF5 attribute value as a plain Python object."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value


class LogitCacheReader:
    """Read a logit cache written by :class:`~dass_distill.logit_cache.LogitCacheWriter`.

    The file is validated on construction and the small metadata (clip-id index, label map,
    provenance, written masks, failed list) is loaded; then the file is closed. The HDF5
    handle for data is opened lazily on the first :meth:`get` and re-opened when the process
    id changes, so a reader can be handed to DataLoader workers (fork or spawn) and each
    worker gets its own handle. Pickling drops the handle and the chunk cache.

    :meth:`get` maps ids to rows with a dict, reads each touched HDF5 chunk whole with one
    contiguous slice read, and gathers rows in numpy. A bounded LRU keeps the last
    ``cache_chunks`` decoded chunks per process (never the whole file).
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_chunks: int = DEFAULT_CACHE_CHUNKS) -> None:
        self._path = os.fspath(path)
        if cache_chunks < 0:
            raise ValueError(f"cache_chunks must be >= 0; got {cache_chunks}")
        self._cache_chunks = int(cache_chunks)
        f = fmt.open_validated(self._path)
        try:
            self._attrs = {k: _plain(v) for k, v in f.attrs.items()}
            self._clip_ids: list[str] = fmt.read_strings(f[fmt.CLIPS_ID])
            self._label_ids = fmt.read_strings(f[fmt.LABEL_IDS])
            self._label_names = fmt.read_strings(f[fmt.LABEL_NAMES])
            self._failed = dict(zip(fmt.read_strings(f[fmt.FAILED_ID]), fmt.read_strings(f[fmt.FAILED_REASON])))
            self._teachers: list[str] = []
            self._provenance: dict[str, dict] = {}
            self._members: dict[str, list[str]] = {}
            self._written: dict[str, np.ndarray] = {}
            self._chunk_rows: dict[str, int] = {}
            self._offsets: dict[str, int] = {}  # file offsets of contiguous logits
            for name, g in f[fmt.TEACHERS].items():
                self._teachers.append(name)
                self._provenance[name] = json.loads(_plain(g.attrs[fmt.ATTR_PROVENANCE]))
                self._members[name] = list(json.loads(_plain(g.attrs[fmt.ATTR_MEMBERS])))
                self._written[name] = g[fmt.WRITTEN][()].astype(bool)
                ds = g[fmt.LOGITS]
                # A contiguous (unchunked) dataset is one block of the file: memory-mapped by
                # get() when allocated; otherwise read in blocks of 256 rows.
                self._chunk_rows[name] = int(ds.chunks[0]) if ds.chunks else 256
                offset = ds.id.get_offset() if ds.chunks is None else None
                if offset is not None and ds.dtype == np.float16:
                    self._offsets[name] = int(offset)
        except (OSError, KeyError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise fmt.CacheFormatError(
                f"{self._path}: cannot read logit cache metadata ({msg}); the file is corrupt, "
                "re-create it with `dass-distill cache`"
            ) from None
        finally:
            f.close()
        self._index: dict[str, int] | None = None
        if len(self._build_index()) != len(self._clip_ids):
            raise fmt.CacheFormatError(
                f"{self._path}: /{fmt.CLIPS_ID} contains duplicate clip ids; re-create it with `dass-distill cache`"
            )
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._lru: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._maps: dict[str, np.memmap] = {}

    # -- pickling / handles --------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        state["_lru"] = OrderedDict()
        state["_maps"] = {}
        state["_index"] = None  # rebuilt on demand; keeps the pickle small for big caches
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _handle(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            if self._file is not None:
                # Inherited across fork: never use it here. Drop our reference only; the
                # parent's handle is a different process's state and stays valid there.
                self._file = None
                self._datasets = {}
                self._lru.clear()
            try:
                # HDF5's own chunk cache is off: whole chunks are cached (decoded) in self._lru.
                self._file = h5py.File(self._path, "r", rdcc_nbytes=0)
            except (FileNotFoundError, OSError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise fmt.CacheFormatError(f"{self._path}: cannot re-open logit cache ({msg})") from None
            self._pid = pid
        return self._file

    def close(self) -> None:
        """Close this process's data handle (it is re-opened on the next :meth:`get`)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None
        self._datasets = {}
        self._lru.clear()
        self._maps = {}

    def __enter__(self) -> LogitCacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- metadata ------------------------------------------------------------------

    def _build_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {cid: row for row, cid in enumerate(self._clip_ids)}
        return self._index

    @property
    def path(self) -> str:
        return self._path

    @property
    def teachers(self) -> list[str]:
        return list(self._teachers)

    @property
    def clip_ids(self) -> list[str]:
        return list(self._clip_ids)

    @property
    def label_ids(self) -> list[str]:
        return list(self._label_ids)

    @property
    def label_names(self) -> list[str]:
        return list(self._label_names)

    @property
    def num_classes(self) -> int:
        return len(self._label_ids)

    @property
    def failed(self) -> dict[str, str]:
        return dict(self._failed)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def format_version(self) -> int:
        return int(self._attrs[fmt.ATTR_FORMAT_VERSION])

    def _teacher(self, teacher: str | None) -> str:
        if teacher is None:
            if len(self._teachers) == 1:
                return self._teachers[0]
            raise ValueError(f"{self._path} holds several teachers {self._teachers}; pass teacher=")
        if teacher not in self._provenance:
            raise KeyError(f"teacher {teacher!r} is not in logit cache {self._path} (teachers: {self._teachers})")
        return teacher

    def provenance(self, teacher: str | None = None) -> dict:
        return json.loads(json.dumps(self._provenance[self._teacher(teacher)]))  # a deep copy

    def members(self, teacher: str | None = None) -> list[str]:
        return list(self._members[self._teacher(teacher)])

    def chunk_rows(self, teacher: str | None = None) -> int:
        return self._chunk_rows[self._teacher(teacher)]

    def written(self, teacher: str | None = None) -> np.ndarray:
        """Boolean mask (row order) of rows that hold logits for ``teacher`` (a copy)."""
        return self._written[self._teacher(teacher)].copy()

    def num_written(self, teacher: str | None = None) -> int:
        return int(self._written[self._teacher(teacher)].sum())

    def has_logits(self, clip_id: str, teacher: str | None = None) -> bool:
        row = self._build_index().get(clip_id)
        return row is not None and bool(self._written[self._teacher(teacher)][row])

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._build_index()

    def __len__(self) -> int:
        return len(self._clip_ids)

    def coverage(self, clip_ids: Iterable[str], teacher: str | None = None) -> tuple[list[str], list[str]]:
        """Reconcile a local clip list with the cache.

        Returns ``(missing_from_cache, extra_in_cache)``: clips of ``clip_ids`` that have no
        logits in the cache (not in the id index, or their row was never written: failed or
        missing), in the order given; and clips with logits in the cache that ``clip_ids``
        does not name, in row order. With ``teacher=None`` a clip counts as covered only if
        every teacher has its row.
        """
        if isinstance(clip_ids, str):
            raise TypeError("coverage() takes a sequence of clip ids, not a single string")
        index = self._build_index()
        masks = [self._written[t] for t in self._teachers] if teacher is None else [self._written[self._teacher(teacher)]]
        have = np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]
        wanted = list(clip_ids)
        missing = [c for c in wanted if (row := index.get(c)) is None or not have[row]]
        wanted_set = set(wanted)
        extra = [self._clip_ids[r] for r in np.flatnonzero(have) if self._clip_ids[r] not in wanted_set]
        return missing, extra

    def storage_info(self, teacher: str | None = None) -> dict[str, Any]:
        """How ``teacher``'s logits are stored: dtype, chunk shape, compression, bytes on disk."""
        name = self._teacher(teacher)
        ds = self._logits(name)
        return {
            "dtype": str(ds.dtype),
            "shape": tuple(ds.shape),
            "chunks": tuple(ds.chunks) if ds.chunks else None,
            "layout": "chunked" if ds.chunks else "contiguous (memory-mapped reads)",
            "compression": ds.compression,
            "compression_opts": ds.compression_opts,
            "storage_bytes": int(ds.id.get_storage_size()),
        }

    # -- data ----------------------------------------------------------------------

    def _rows(self, clip_ids: Sequence[str], teacher: str) -> np.ndarray:
        if isinstance(clip_ids, str):
            raise TypeError(f"get() takes a sequence of clip ids; wrap a single id as [{clip_ids!r}]")
        index = self._build_index()
        ids = list(clip_ids)
        rows = np.empty(len(ids), dtype=np.int64)
        for i, cid in enumerate(ids):
            row = index.get(cid)
            if row is None:
                raise KeyError(f"clip id {cid!r} is not in logit cache {self._path}")
            rows[i] = row
        unwritten = ~self._written[teacher][rows]
        if unwritten.any():
            cid = ids[int(np.flatnonzero(unwritten)[0])]
            why = f"failed during caching: {self._failed[cid]}" if cid in self._failed else "never written"
            raise KeyError(
                f"clip id {cid!r} has no logits for teacher {teacher!r} in {self._path} ({why}); "
                f"{int(unwritten.sum())} of {len(ids)} requested clips lack logits"
            )
        return rows

    def _logits(self, teacher: str) -> h5py.Dataset:
        f = self._handle()  # first: a re-open after fork clears self._datasets
        ds = self._datasets.get(teacher)
        if ds is None:
            ds = self._datasets[teacher] = f[f"{fmt.TEACHERS}/{teacher}/{fmt.LOGITS}"]
        return ds

    def _chunk(self, teacher: str, ds: h5py.Dataset, chunk: int) -> np.ndarray:
        key = (teacher, chunk)
        arr = self._lru.get(key)
        if arr is not None:
            self._lru.move_to_end(key)
            return arr
        cr = self._chunk_rows[teacher]
        start = chunk * cr
        arr = ds[start : min(start + cr, ds.shape[0])]
        if self._cache_chunks:
            self._lru[key] = arr
            while len(self._lru) > self._cache_chunks:
                self._lru.popitem(last=False)
        return arr

    def get(self, clip_ids: Sequence[str], teacher: str | None = None) -> np.ndarray:
        """Raw logits, float32 of shape (len(clip_ids), num_classes), in the order asked.

        ``teacher`` may be omitted when the cache holds exactly one teacher. An id not in the
        cache, or one whose row was never written (e.g. failed audio), raises ``KeyError``.
        """
        name = self._teacher(teacher)
        rows = self._rows(clip_ids, name)
        out = np.empty((len(rows), self.num_classes), dtype=np.float32)
        if len(rows) == 0:
            return out
        if name in self._offsets:
            # Contiguous: gather straight from the page cache through a read-only memory map
            # (no copy of the file is held), in row order for locality.
            order = np.argsort(rows, kind="stable")
            out[order] = self._map(name)[rows[order]]
            return out
        ds = self._logits(name)
        cr = self._chunk_rows[name]
        # Group the requested rows by chunk; read each touched chunk once (whole, one
        # contiguous slice, or from the LRU) and scatter its rows into the output.
        chunk_of = rows // cr
        order = np.argsort(chunk_of, kind="stable")
        sorted_chunks = chunk_of[order]
        cuts = np.flatnonzero(np.diff(sorted_chunks)) + 1
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(rows)].tolist()):
            chunk = int(sorted_chunks[a])
            sel = order[a:b]
            out[sel] = self._chunk(name, ds, chunk)[rows[sel] - chunk * cr]
        return out

    def _map(self, teacher: str) -> np.memmap:
        m = self._maps.get(teacher)
        if m is None:
            # A read-only shared mapping stays valid across fork; spawn pickles it away.
            try:
                m = np.memmap(self._path, dtype=np.float16, mode="r", offset=self._offsets[teacher],
                              shape=(len(self._clip_ids), self.num_classes))
            except (OSError, ValueError) as e:  # e.g. a file truncated after it was opened
                raise fmt.CacheFormatError(f"{self._path}: cannot map teacher {teacher!r}'s logits ({e}); the "
                                           "file is damaged, re-create it with `dass-distill cache`") from None
            self._maps[teacher] = m
        return m

    def __repr__(self) -> str:
        return (
            f"LogitCacheReader({self._path!r}, clips={len(self._clip_ids)}, classes={self.num_classes}, "
            f"teachers={self._teachers}, format_version={self._attrs.get(fmt.ATTR_FORMAT_VERSION)})"
        )
