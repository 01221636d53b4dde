"""A plain-data summary of a logit cache (the CLI renders it; no rendering here)."""

from __future__ import annotations

import os
from typing import Any

import h5py

from . import format as fmt
from .reader import LogitCacheReader
from .storage import index_bits


def describe_storage(storage: dict, num_classes: int) -> str:
    """One line for a teacher's ``storage`` attribute, e.g. ``top-k 20 (fp16 values, 10-bit indices, fp16 rest)``."""
    kind = storage.get("kind")
    if kind == "dense":
        return f"dense fp16 ({num_classes} logits)"
    if kind == "topk":
        return f"top-k {storage.get('k')} (fp16 values, {index_bits(num_classes)}-bit indices, fp16 rest)"
    return str(storage)


def _params_bytes_on_disk(path: str) -> int | None:
    """Storage size of ``/views/params`` (None when absent)."""
    with h5py.File(path, "r") as f:
        ds = f.get(fmt.VIEW_PARAMS)
        return int(ds.id.get_storage_size()) if isinstance(ds, h5py.Dataset) else None


def summarize(reader: LogitCacheReader) -> dict[str, Any]:
    """Describe ``reader``'s file as a dict of plain Python values (JSON-serialisable).

    Keys: ``path``, ``format``, ``format_version``, ``toolkit_version``, ``created_utc``,
    ``command``, ``rows``, ``num_classes``, ``file_bytes``, ``failed`` (count), ``views``
    (``count``: views per clip; ``augmented``; ``augment``: how the views were drawn, or
    None; ``replay_bytes_per_view``: 16 when augmented, else 0; ``params_bytes_on_disk``:
    storage of ``/views/params``, None without it), and ``teachers``: one dict per teacher
    with ``written``, ``failed`` (failed clips not written for it), ``missing`` (neither
    written nor failed), ``storage`` (the ``storage`` attribute, e.g. ``{"kind": "topk",
    "k": 20}``), ``storage_description`` (one line), ``dtype`` (of the first data dataset),
    ``chunk_shape``, ``layout``, ``compression``, ``compression_opts``, ``bytes_on_disk``
    (storage of the teacher's data datasets), ``bytes_per_row`` (on disk per written row,
    i.e. per clip; None if none written), ``bytes_per_view`` (what the format stores per
    view), ``bytes_on_disk_per_view`` (measured: ``bytes_on_disk`` per written view; None
    if none written; a contiguous dataset is allocated whole, so a partly written one
    counts its unwritten rows too), ``replay_bytes_per_view`` (the shared replay
    parameters per view: 16 when augmented, else 0), ``members`` and ``provenance``.
    """
    attrs = reader.attrs
    rows = len(reader)
    views = reader.views
    failed = reader.failed
    index_rows = {cid: r for r, cid in enumerate(reader.clip_ids)} if failed else {}
    replay = fmt.VIEW_PARAMS_DTYPE.itemsize if reader.augmented else 0
    teachers: dict[str, Any] = {}
    for name in reader.teachers:
        mask = reader.written(name)
        written = int(mask.sum())
        failed_unwritten = sum(1 for cid in failed if not mask[index_rows[cid]])
        storage = reader.storage_info(name)
        teachers[name] = {
            "written": written,
            "failed": failed_unwritten,
            "missing": rows - written - failed_unwritten,
            "storage": storage["storage"],
            "storage_description": describe_storage(storage["storage"], reader.num_classes),
            "dtype": storage["dtype"],
            "chunk_shape": list(storage["chunks"]) if storage["chunks"] else None,
            "layout": storage["layout"],
            "compression": storage["compression"],
            "compression_opts": storage["compression_opts"],
            "bytes_on_disk": storage["storage_bytes"],
            "bytes_per_row": (storage["storage_bytes"] / written) if written else None,
            "bytes_per_view": storage["bytes_per_view"],
            "bytes_on_disk_per_view": (storage["storage_bytes"] / (written * views)) if written else None,
            "replay_bytes_per_view": replay,
            "members": reader.members(name),
            "provenance": reader.provenance(name),
        }
    return {
        "path": reader.path,
        "format": attrs.get(fmt.ATTR_FORMAT),
        "format_version": attrs.get(fmt.ATTR_FORMAT_VERSION),
        "toolkit_version": attrs.get(fmt.ATTR_TOOLKIT_VERSION, ""),
        "created_utc": attrs.get(fmt.ATTR_CREATED_UTC, ""),
        "command": attrs.get(fmt.ATTR_COMMAND, ""),
        "rows": rows,
        "num_classes": reader.num_classes,
        "file_bytes": os.path.getsize(reader.path),
        "failed": len(failed),
        "views": {
            "count": views,
            "augmented": reader.augmented,
            "augment": reader.augment,
            "replay_bytes_per_view": replay,
            "params_bytes_on_disk": _params_bytes_on_disk(reader.path),
        },
        "teachers": teachers,
    }
