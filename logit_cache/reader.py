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
from .storage import DenseStorage, Storage, storage_from_attr

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
            self._storage: dict[str, Storage] = {}
            # dataset path -> (chunk rows or None, file offset when contiguous, dtype, shape)
            self._layout: dict[str, tuple[int, int | None, np.dtype, tuple[int, ...]]] = {}
            version = int(self._attrs[fmt.ATTR_FORMAT_VERSION])
            vg = f.get(fmt.VIEWS)
            self._views = int(vg.attrs[fmt.ATTR_VIEW_COUNT]) if vg is not None else 1
            augment = _plain(vg.attrs.get(fmt.ATTR_AUGMENT, "null")) if vg is not None else "null"
            self._augment = json.loads(augment)
            self._params_path = fmt.VIEW_PARAMS if fmt.VIEW_PARAMS in f else None
            if self._params_path:
                self._note_layout(f[self._params_path])
            for name, g in f[fmt.TEACHERS].items():
                self._teachers.append(name)
                self._provenance[name] = json.loads(_plain(g.attrs[fmt.ATTR_PROVENANCE]))
                self._members[name] = list(json.loads(_plain(g.attrs[fmt.ATTR_MEMBERS])))
                self._written[name] = g[fmt.WRITTEN][()].astype(bool)
                self._storage[name] = (storage_from_attr(_plain(g.attrs[fmt.ATTR_STORAGE])) if version >= 2
                                       else DenseStorage())
                for ds_name in self._storage[name].datasets(len(self._label_ids)):
                    self._note_layout(g[ds_name])
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

    def _note_layout(self, ds: h5py.Dataset) -> None:
        # Version 1 stored (N, C) logits: seen as (N, 1, C), one view per clip.
        shape = tuple(ds.shape)
        if ds.ndim == 2 and ds.name.endswith("/" + fmt.LOGITS):
            shape = (ds.shape[0], 1, ds.shape[1])
        # A contiguous (unchunked) dataset is one block of the file: memory-mapped when
        # allocated; otherwise (e.g. nothing written) read in blocks of 256 rows.
        offset = ds.id.get_offset() if ds.chunks is None else None
        chunk_rows = int(ds.chunks[0]) if ds.chunks else 256
        self._layout[ds.name.lstrip("/")] = (chunk_rows, None if offset is None else int(offset), ds.dtype, shape)

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
        return self._layout[self._paths(self._teacher(teacher))[0]][0]

    @property
    def views(self) -> int:
        """Views per clip (1: the clip itself)."""
        return self._views

    @property
    def augmented(self) -> bool:
        """Whether the views are augmented (then :meth:`view_params` replays them)."""
        return self._params_path is not None

    @property
    def augment(self) -> dict | None:
        """How the views were drawn (the writer's ``augment`` record), or None."""
        return json.loads(json.dumps(self._augment))

    def storage(self, teacher: str | None = None) -> Storage:
        return self._storage[self._teacher(teacher)]

    def _paths(self, teacher: str) -> list[str]:
        names = self._storage[teacher].datasets(self.num_classes)
        return [f"{fmt.TEACHERS}/{teacher}/{n}" for n in names]

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
        """How ``teacher``'s logits are stored: kind, datasets, chunking, compression, bytes on disk and per view."""
        name = self._teacher(teacher)
        f = self._handle()
        datasets = [f[p] for p in self._paths(name)]
        first = datasets[0]
        storage = self._storage[name]
        return {
            "storage": storage.describe(),
            "dtype": str(first.dtype),
            "shape": tuple(first.shape),
            "chunks": tuple(first.chunks) if first.chunks else None,
            "layout": "chunked" if first.chunks else "contiguous (memory-mapped reads)",
            "compression": first.compression,
            "compression_opts": first.compression_opts,
            "storage_bytes": sum(int(ds.id.get_storage_size()) for ds in datasets),
            "bytes_per_view": storage.bytes_per_view(self.num_classes),
            "replay_bytes_per_view": fmt.VIEW_PARAMS_DTYPE.itemsize if self.augmented else 0,
        }

    # -- data ----------------------------------------------------------------------

    def _rows(self, clip_ids: Sequence[str], teacher: str) -> np.ndarray:
        if isinstance(clip_ids, str):
            raise TypeError(f"get() takes a sequence of clip ids; wrap a single id as [{clip_ids!r}]")
        index = self._build_index()
        ids = list(clip_ids)
        try:  # one C-level pass: a per-element loop costs more than the gather itself at 4096 ids
            rows = np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))
        except (KeyError, TypeError):
            cid = next(c for c in ids if not isinstance(c, str) or c not in index)
            raise KeyError(f"clip id {cid!r} is not in logit cache {self._path}") from None
        unwritten = ~self._written[teacher][rows]
        if unwritten.any():
            cid = ids[int(np.flatnonzero(unwritten)[0])]
            why = f"failed during caching: {self._failed[cid]}" if cid in self._failed else "never written"
            raise KeyError(
                f"clip id {cid!r} has no logits for teacher {teacher!r} in {self._path} ({why}); "
                f"{int(unwritten.sum())} of {len(ids)} requested clips lack logits"
            )
        return rows

    def _dataset(self, path: str) -> h5py.Dataset:
        f = self._handle()  # first: a re-open after fork clears self._datasets
        ds = self._datasets.get(path)
        if ds is None:
            ds = self._datasets[path] = f[path]
        return ds

    def _chunk(self, path: str, chunk: int) -> np.ndarray:
        ds = self._dataset(path)  # first: after a fork this re-opens the file and clears the LRU
        key = (path, chunk)
        arr = self._lru.get(key)
        if arr is not None:
            self._lru.move_to_end(key)
            return arr
        cr, _, _, shape = self._layout[path]
        start = chunk * cr
        arr = ds[start: min(start + cr, ds.shape[0])].reshape(-1, *shape[1:])
        if self._cache_chunks:
            self._lru[key] = arr
            while len(self._lru) > self._cache_chunks:
                self._lru.popitem(last=False)
        return arr

    def _gather(self, path: str, rows: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Elements (rows[i], views[i], ...) of the dataset at ``path``, in the order asked."""
        cr, offset, dtype, shape = self._layout[path]
        out = np.empty((len(rows), *shape[2:]), dtype=dtype)
        if len(rows) == 0:
            return out
        if offset is not None:
            # Contiguous: gather straight from the page cache through a read-only memory map
            # (no copy of the file is held), in row order for locality.
            order = np.argsort(rows, kind="stable")
            out[order] = self._map(path)[rows[order], views[order]]
            return out
        # Chunked: group the requested rows by chunk; read each touched chunk once (whole,
        # one contiguous slice, or from the LRU) and scatter its rows into the output.
        chunk_of = rows // cr
        order = np.argsort(chunk_of, kind="stable")
        sorted_chunks = chunk_of[order]
        cuts = np.flatnonzero(np.diff(sorted_chunks)) + 1
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(rows)].tolist()):
            chunk = int(sorted_chunks[a])
            sel = order[a:b]
            out[sel] = self._chunk(path, chunk)[rows[sel] - chunk * cr, views[sel]]
        return out

    def _views_of(self, views: Sequence[int] | np.ndarray | int | None, n: int) -> np.ndarray:
        if views is None:
            if self._views > 1:
                raise ValueError(f"{self._path} holds {self._views} views per clip; pass views= (one per clip id)")
            return np.zeros(n, dtype=np.int64)
        v = np.broadcast_to(np.asarray(views, dtype=np.int64), (n,)) if np.ndim(views) == 0 else np.asarray(views, dtype=np.int64)
        if v.shape != (n,):
            raise ValueError(f"views must give one view per clip id ({n}); got shape {v.shape}")
        if n and (v.min() < 0 or v.max() >= self._views):
            raise IndexError(f"view out of range: {self._path} holds views 0..{self._views - 1}")
        return v

    def get(self, clip_ids: Sequence[str], teacher: str | None = None,
            views: Sequence[int] | np.ndarray | int | None = None) -> np.ndarray:
        """Raw logits, float32 of shape (len(clip_ids), num_classes), in the order asked.

        ``teacher`` may be omitted when the cache holds exactly one teacher; ``views`` (one
        per clip, or one for all) when it holds one view per clip. Top-k storage is expanded
        with its rest rule (FORMAT.md). An id not in the cache, or one whose row was never
        written (e.g. failed audio), raises ``KeyError``.
        """
        arrays = self.get_encoded(clip_ids, teacher, views)
        return self._storage[self._teacher(teacher)].decode(arrays, self.num_classes).astype(np.float32, copy=False)

    def get_encoded(self, clip_ids: Sequence[str], teacher: str | None = None,
                    views: Sequence[int] | np.ndarray | int | None = None) -> dict[str, np.ndarray]:
        """The stored arrays of the given views as they are on disk (e.g. top-k values, packed indices, rest)."""
        name = self._teacher(teacher)
        rows = self._rows(clip_ids, name)
        v = self._views_of(views, len(rows))
        return {p.rsplit("/", 1)[1]: self._gather(p, rows, v) for p in self._paths(name)}

    def view_params(self, clip_ids: Sequence[str], views: Sequence[int] | np.ndarray | int) -> np.ndarray:
        """Replay parameters (``VIEW_PARAMS_DTYPE``, one per clip) of the given views of an augmented cache."""
        if self._params_path is None:
            raise ValueError(f"{self._path} has no augmented views (nothing to replay)")
        if isinstance(clip_ids, str):
            raise TypeError(f"view_params() takes a sequence of clip ids; wrap a single id as [{clip_ids!r}]")
        index = self._build_index()
        try:
            rows = np.array([index[c] for c in clip_ids], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"clip id {e.args[0]!r} is not in logit cache {self._path}") from None
        return self._gather(self._params_path, rows, self._views_of(views, len(rows)))

    def clip_id(self, row: int) -> str:
        """The clip id of a row (e.g. a view's mixup ``partner``)."""
        return self._clip_ids[row]

    def _map(self, path: str) -> np.memmap:
        m = self._maps.get(path)
        if m is None:
            _, offset, dtype, shape = self._layout[path]
            # A read-only shared mapping stays valid across fork; spawn pickles it away.
            try:
                m = np.memmap(self._path, dtype=dtype, mode="r", offset=offset, shape=shape)
            except (OSError, ValueError) as e:  # e.g. a file truncated after it was opened
                raise fmt.CacheFormatError(f"{self._path}: cannot map /{path} ({e}); the "
                                           "file is damaged, re-create it with `dass-distill cache`") from None
            self._maps[path] = m
        return m

    def __repr__(self) -> str:
        return (
            f"LogitCacheReader({self._path!r}, clips={len(self._clip_ids)}, classes={self.num_classes}, "
            f"teachers={self._teachers}, views={self._views}, format_version={self._attrs.get(fmt.ATTR_FORMAT_VERSION)})"
        )
