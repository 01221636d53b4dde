"""Format constants, names inside the file, and validation of an open cache file.

The layout is specified in ``FORMAT.md`` next to this module. This module is the
single place that knows the names of groups, datasets and attributes, and the
single place that decides whether a file is a readable logit cache.
"""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from dass_distill.errors import UserError

FORMAT_NAME = "dass-distill-logit-cache"
FORMAT_VERSION = 2
#: Format versions this code can read. A newer file is refused, never guessed at.
SUPPORTED_VERSIONS = (1, 2)

# Root attributes.
ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_TOOLKIT_VERSION = "toolkit_version"
ATTR_CREATED_UTC = "created_utc"
ATTR_COMMAND = "command"

# Datasets and groups.
CLIPS_ID = "clips/id"
LABEL_IDS = "label_map/id"
LABEL_NAMES = "label_map/name"
TEACHERS = "teachers"
LOGITS = "logits"  # /teachers/<name>/logits
WRITTEN = "written"  # /teachers/<name>/written
VIEWS = "views"  # group; attributes count and augment
VIEW_PARAMS = "views/params"  # (N, V) compound, present when the views are augmented
FAILED_ID = "failed/id"
FAILED_REASON = "failed/reason"

# Teacher group attributes.
ATTR_PROVENANCE = "provenance"
ATTR_MEMBERS = "members"
ATTR_STORAGE = "storage"  # version 2: JSON, {"kind": "dense"} or {"kind": "topk", "k": K}
# /views attributes (version 2).
ATTR_VIEW_COUNT = "count"
ATTR_AUGMENT = "augment"

#: Replay parameters of one augmented view, 16 bytes (FORMAT.md, "Views").
VIEW_PARAMS_DTYPE = np.dtype([
    ("partner", "<i4"),     # row in /clips/id of the mixup partner; -1 = no mixup
    ("lam", "<f2"),         # weight of the clip itself in the mix (1 without mixup)
    ("gain_db", "<f2"),     # gain applied to the (mixed) waveform, dB
    ("shift", "<i2"),       # circular shift of the waveform, in 10 ms frames (positive = later)
    ("freq_start", "u1"),   # frequency mask: first bin on the 128-bin Kaldi grid
    ("freq_width", "u1"),   # 0 = no frequency mask
    ("time_start", "<u2"),  # time mask: first 10 ms frame
    ("time_width", "<u2"),  # 0 = no time mask
])

#: Suffix of the file a writer fills before the atomic rename to the final path.
PARTIAL_SUFFIX = ".partial"

_FIX = "re-create it with `dass-distill cache`"


class CacheFormatError(UserError):
    """The file is not a logit cache this toolkit can read (one-line message naming file and fix)."""


def toolkit_version() -> str:
    """Installed dass-distill version, for messages; '' when not installed as a distribution."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - stdlib since 3.8
        return ""
    try:
        return version("dass-distill")
    except PackageNotFoundError:
        return ""


def check_teacher_name(name: object) -> str:
    """Teacher names become HDF5 group names: non-empty, no '/', not '.' or '..'."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(
            f"invalid teacher name {name!r}: use a non-empty string without '/' (it becomes an HDF5 group name)"
        )
    return name


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value[()])
    return str(value)


def read_strings(ds: h5py.Dataset) -> list[str]:
    """A 1-D string dataset as a list of Python ``str``."""
    if ds.shape[0] == 0:
        return []
    return ds.asstr()[()].tolist()


def validate(f: h5py.File, path: str) -> None:
    """Raise :class:`CacheFormatError` unless ``f`` holds a logit cache of a supported version.

    Checks the format name and version first (so a newer file gets the version message,
    not a confusing "missing dataset" one), then that every dataset of version 1 exists
    with consistent shapes and dtypes.
    """
    fmt = f.attrs.get(ATTR_FORMAT)
    if fmt is None or _attr_str(fmt) != FORMAT_NAME:
        found = "no 'format' attribute" if fmt is None else f"format {_attr_str(fmt)!r}"
        raise CacheFormatError(
            f"{path}: not a dass-distill logit cache ({found}, expected {FORMAT_NAME!r}); "
            f"pass a file written by `dass-distill cache` or {_FIX}"
        )
    raw_version = f.attrs.get(ATTR_FORMAT_VERSION)
    try:
        version = int(raw_version)  # type: ignore[arg-type]
        if version != raw_version:
            raise ValueError
    except (TypeError, ValueError):
        raise CacheFormatError(
            f"{path}: logit cache has an invalid format_version {raw_version!r}; the file is damaged, {_FIX}"
        ) from None
    if version not in SUPPORTED_VERSIONS:
        have = toolkit_version()
        this = f"this dass-distill{(' ' + have) if have else ''}"
        reads = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise CacheFormatError(
            f"{path}: logit cache format version {version}, but {this} reads version"
            f"{'s' if len(SUPPORTED_VERSIONS) > 1 else ''} {reads}; "
            f"upgrade dass-distill or {_FIX}"
        )

    def need(name: str) -> h5py.Dataset:
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            raise CacheFormatError(f"{path}: logit cache is missing dataset /{name}; the file is incomplete, {_FIX}")
        return obj

    def need_1d_strings(name: str) -> h5py.Dataset:
        ds = need(name)
        if ds.ndim != 1 or h5py.check_string_dtype(ds.dtype) is None:
            raise CacheFormatError(f"{path}: /{name} must be a 1-D string dataset (found {ds.dtype}, shape {ds.shape}); {_FIX}")
        return ds

    clips = need_1d_strings(CLIPS_ID)
    n = clips.shape[0]
    label_ids = need_1d_strings(LABEL_IDS)
    label_names = need_1d_strings(LABEL_NAMES)
    c = label_ids.shape[0]
    if label_names.shape[0] != c:
        raise CacheFormatError(
            f"{path}: /{LABEL_IDS} has {c} entries but /{LABEL_NAMES} has {label_names.shape[0]}; {_FIX}"
        )
    failed_id = need_1d_strings(FAILED_ID)
    failed_reason = need_1d_strings(FAILED_REASON)
    if failed_id.shape != failed_reason.shape:
        raise CacheFormatError(f"{path}: /{FAILED_ID} and /{FAILED_REASON} differ in length; {_FIX}")

    group = f.get(TEACHERS)
    if not isinstance(group, h5py.Group) or len(group) == 0:
        raise CacheFormatError(f"{path}: logit cache has no teachers (group /{TEACHERS} missing or empty); {_FIX}")
    views = 1
    if version >= 2:
        vg = f.get(VIEWS)
        if not isinstance(vg, h5py.Group) or ATTR_VIEW_COUNT not in vg.attrs:
            raise CacheFormatError(f"{path}: logit cache is missing group /{VIEWS} with its 'count' attribute; {_FIX}")
        views = int(vg.attrs[ATTR_VIEW_COUNT])
        if views < 1:
            raise CacheFormatError(f"{path}: /{VIEWS} count is {views}, expected at least 1; {_FIX}")
        params = f.get(VIEW_PARAMS)
        if params is not None and (not isinstance(params, h5py.Dataset) or params.shape != (n, views)
                                   or params.dtype != VIEW_PARAMS_DTYPE):
            raise CacheFormatError(f"{path}: /{VIEW_PARAMS} must be ({n}, {views}) view parameters "
                                   f"(found {getattr(params, 'shape', None)}); {_FIX}")
    for name, tg in group.items():
        where = f"/{TEACHERS}/{name}"
        if not isinstance(tg, h5py.Group):
            raise CacheFormatError(f"{path}: {where} is not a group; {_FIX}")
        if version == 1:
            logits = need(f"{TEACHERS}/{name}/{LOGITS}")
            if logits.shape != (n, c) or logits.dtype.kind != "f":
                raise CacheFormatError(
                    f"{path}: {where}/{LOGITS} has shape {logits.shape} and dtype {logits.dtype}, "
                    f"expected ({n}, {c}) floating point; {_FIX}"
                )
        else:
            from .storage import storage_from_attr

            try:
                storage = storage_from_attr(_attr_str(tg.attrs[ATTR_STORAGE]))
                specs = storage.datasets(c)
            except (KeyError, ValueError):
                raise CacheFormatError(f"{path}: {where} has no valid '{ATTR_STORAGE}' attribute; {_FIX}") from None
            for ds_name, (per_view, dtype, _) in specs.items():
                ds = need(f"{TEACHERS}/{name}/{ds_name}")
                if ds.shape != (n, views, *per_view) or ds.dtype != dtype:
                    raise CacheFormatError(
                        f"{path}: {where}/{ds_name} has shape {ds.shape} and dtype {ds.dtype}, "
                        f"expected {(n, views, *per_view)} {dtype}; {_FIX}"
                    )
        written = need(f"{TEACHERS}/{name}/{WRITTEN}")
        if written.shape != (n,) or written.dtype.kind not in "ub":
            raise CacheFormatError(
                f"{path}: {where}/{WRITTEN} has shape {written.shape} and dtype {written.dtype}, expected ({n},) uint8; {_FIX}"
            )
        for attr in (ATTR_PROVENANCE, ATTR_MEMBERS):
            if attr not in tg.attrs:
                raise CacheFormatError(f"{path}: {where} has no '{attr}' attribute; {_FIX}")
            try:
                json.loads(_attr_str(tg.attrs[attr]))
            except ValueError:
                raise CacheFormatError(f"{path}: {where} attribute '{attr}' is not valid JSON; {_FIX}") from None


def open_validated(path: str | os.PathLike[str]) -> h5py.File:
    """Open ``path`` read-only and validate it; the caller owns (and closes) the returned file."""
    p = os.fspath(path)
    if not os.path.exists(p):
        partial = p + PARTIAL_SUFFIX
        hint = (
            f" ({partial} exists: the run that wrote it did not finish; re-run `dass-distill cache`)"
            if os.path.exists(partial)
            else ""
        )
        raise FileNotFoundError(f"{p}: logit cache not found{hint}")
    if os.path.isdir(p):
        raise CacheFormatError(f"{p}: is a directory, not a logit cache file; pass the .h5 file")
    try:
        is_hdf5 = h5py.is_hdf5(p)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise CacheFormatError(f"{p}: not an HDF5 file (wrong path, or truncated/corrupt); {_FIX}")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CacheFormatError(f"{p}: cannot open as HDF5 ({msg}); the file is truncated or corrupt, {_FIX}") from None
    try:
        validate(f, p)
    except CacheFormatError:
        f.close()
        raise
    except (OSError, KeyError, RuntimeError) as e:  # damaged metadata surfaces here
        f.close()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CacheFormatError(f"{p}: cannot read logit cache metadata ({msg}); the file is corrupt, {_FIX}") from None
    return f
