"""A plain-data summary of a logit cache (the CLI renders it; no rendering here)."""

from __future__ import annotations

import os
from typing import Any

from . import format as fmt
from .reader import LogitCacheReader


def summarize(reader: LogitCacheReader) -> dict[str, Any]:
    """Describe ``reader``'s file as a dict of plain Python values (JSON-serialisable).

    Keys: ``path``, ``format``, ``format_version``, ``toolkit_version``, ``created_utc``,
    ``command``, ``rows``, ``num_classes``, ``file_bytes``, ``failed`` (count), and
    ``teachers``: one dict per teacher with ``written``, ``failed`` (failed clips not
    written for it), ``missing`` (neither written nor failed), ``dtype``, ``chunk_shape``, ``layout``,
    ``compression``, ``compression_opts``, ``bytes_on_disk`` (logits dataset storage),
    ``bytes_per_row`` (on disk per written row; None if none written), ``members`` and
    ``provenance``.
    """
    attrs = reader.attrs
    rows = len(reader)
    failed = reader.failed
    index_rows = {cid: r for r, cid in enumerate(reader.clip_ids)} if failed else {}
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
            "dtype": storage["dtype"],
            "chunk_shape": list(storage["chunks"]) if storage["chunks"] else None,
            "layout": storage["layout"],
            "compression": storage["compression"],
            "compression_opts": storage["compression_opts"],
            "bytes_on_disk": storage["storage_bytes"],
            "bytes_per_row": (storage["storage_bytes"] / written) if written else None,
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
        "teachers": teachers,
    }
