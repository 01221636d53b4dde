"""Dataset manifests and label maps.

Two manifest formats are read:

* the AST/DASS JSON datafile: ``{"data": [{"wav": PATH, "labels": "mid1,mid2"}, ...]}``
  (an optional ``"id"`` per entry overrides the clip id);
* a CSV with a header holding ``path`` (or ``wav``) and ``labels`` columns, labels
  separated by commas inside the field (quote it) or by ``;``, and an optional ``id``.

Relative audio paths are resolved against the manifest's folder. A clip's id is its
``id`` field, else the audio file name without extension; ids must be unique.

The label map is the AudioSet ``class_labels_indices.csv`` format
(``index,mid,display_name``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dass_distill.errors import UserError


@dataclass(frozen=True)
class LabelMap:
    """Ordered class list: machine ids (AudioSet mids) and display names."""

    ids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ValueError("label ids and names differ in length")
        if len(set(self.ids)) != len(self.ids):
            raise UserError("label map has duplicate label ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index(self) -> dict[str, int]:
        return {mid: i for i, mid in enumerate(self.ids)}

    def encode(self, labels: Iterable[str]) -> np.ndarray:
        """Multi-hot float32 vector for a set of label ids."""
        index = self.index
        target = np.zeros(len(self), dtype=np.float32)
        for mid in labels:
            target[index[mid]] = 1.0
        return target

    @classmethod
    def from_csv(cls, path: str | Path) -> "LabelMap":
        """Read ``class_labels_indices.csv`` (columns index, mid, display_name)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"label map {path} not found; pass the class_labels_indices.csv that goes with the data")
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"mid", "display_name"} <= set(rows[0]):
            raise UserError(f"label map {path} needs the columns index,mid,display_name")
        if "index" in rows[0]:
            try:
                rows.sort(key=lambda r: int(r["index"]))
            except ValueError as e:
                raise UserError(f"label map {path}: non-integer index ({e})") from None
        return cls(tuple(r["mid"].strip() for r in rows), tuple(r["display_name"].strip() for r in rows))

    def to_csv(self, path: str | Path) -> None:
        with Path(path).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "mid", "display_name"])
            for i, (mid, name) in enumerate(zip(self.ids, self.names)):
                writer.writerow([i, mid, name])

    def to_dict(self) -> dict[str, list[str]]:
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelMap":
        return cls(tuple(d["ids"]), tuple(d["names"]))


@dataclass(frozen=True)
class Clip:
    """One manifest entry."""

    id: str
    path: Path
    labels: tuple[str, ...]


@dataclass
class Manifest:
    """A list of labelled clips and the label map their labels refer to."""

    clips: list[Clip]
    label_map: LabelMap
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clips]

    def targets(self) -> np.ndarray:
        """(num_clips, num_classes) multi-hot label matrix."""
        return np.stack([self.label_map.encode(c.labels) for c in self.clips]) if self.clips else np.zeros(
            (0, len(self.label_map)), np.float32
        )

    def subset(self, ids: Sequence[str]) -> "Manifest":
        keep = set(ids)
        return Manifest([c for c in self.clips if c.id in keep], self.label_map, self.source)


def default_label_map_path(manifest_path: Path) -> Path:
    return manifest_path.parent / "class_labels_indices.csv"


def load_manifest(path: str | Path, label_map: LabelMap | str | Path | None = None) -> Manifest:
    """Read a JSON (AST datafile) or CSV manifest and check it against the label map.

    Without ``label_map``, ``class_labels_indices.csv`` beside the manifest is used.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} not found")
    if not isinstance(label_map, LabelMap):
        label_map = LabelMap.from_csv(label_map if label_map is not None else default_label_map_path(path))

    if path.suffix.lower() == ".json":
        entries = _read_json_entries(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        entries = _read_csv_entries(path)
    else:
        raise UserError(f"manifest {path}: unknown format '{path.suffix}'; use .json (AST datafile) or .csv")
    if not entries:
        raise UserError(f"manifest {path} is empty: it lists no clips")

    known = label_map.index
    clips: list[Clip] = []
    seen: dict[str, Path] = {}
    for n, (wav, labels, clip_id) in enumerate(entries, start=1):
        if not wav:
            raise UserError(f"manifest {path}, entry {n}: no audio path")
        audio = Path(wav)
        if not audio.is_absolute():
            audio = path.parent / audio
        label_list = tuple(lab.strip() for lab in _split_labels(labels) if lab.strip())
        for lab in label_list:
            if lab not in known:
                raise UserError(
                    f"manifest {path}, entry {n} ({wav}): unknown label '{lab}'; it is not in the label map"
                )
        cid = clip_id or audio.stem
        if cid in seen:
            raise UserError(
                f"manifest {path}: duplicate clip id '{cid}' ({seen[cid]} and {audio}); give entries an 'id' field"
            )
        seen[cid] = audio
        clips.append(Clip(cid, audio, label_list))
    return Manifest(clips, label_map, path)


#: Audio files a folder given as an audio list contributes (what soundfile reads).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def load_audio_list(path: str | Path) -> Manifest:
    """Audio without labels, for self-supervised pretraining: a manifest (its labels ignored, no
    label map needed), a ``.txt`` list of audio paths (one per line, ``#`` comments; relative
    paths against the list's folder) or a folder (its audio files, recursively, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{path} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        entries = [(str(p), None, p.relative_to(path).with_suffix("").as_posix()) for p in files]
    elif not path.is_file():
        raise UserError(f"audio list {path} not found")
    elif path.suffix.lower() == ".txt":
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        entries = [(line, None, None) for line in lines if line and not line.startswith("#")]
    elif path.suffix.lower() == ".json":
        entries = _read_json_entries(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        entries = _read_csv_entries(path, need_labels=False)
    else:
        raise UserError(f"audio list {path}: unknown format '{path.suffix}'; use a folder, a .txt list of files, "
                        f"or a .json / .csv manifest")
    if not entries:
        raise UserError(f"audio list {path} is empty: it lists no clips")
    clips, seen = [], {}
    for n, (wav, _, clip_id) in enumerate(entries, start=1):
        audio = Path(wav)
        if not audio.is_absolute():
            audio = (path if path.is_dir() else path.parent) / audio
        cid = clip_id or audio.stem
        if cid in seen:
            raise UserError(f"audio list {path}: duplicate clip id '{cid}' ({seen[cid]} and {audio}); "
                            f"give the files distinct names")
        seen[cid] = audio
        clips.append(Clip(cid, audio, ()))
    return Manifest(clips, LabelMap((), ()), path)


def _split_labels(labels: str | Sequence[str] | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str):
        return labels.replace(";", ",").split(",")
    return list(labels)


def _read_json_entries(path: Path) -> list[tuple[str, object, str | None]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"manifest {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f'manifest {path}: expected {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    out = []
    for n, entry in enumerate(doc["data"], start=1):
        if not isinstance(entry, dict) or "wav" not in entry:
            raise UserError(f"manifest {path}, entry {n}: needs a 'wav' field")
        out.append((str(entry["wav"]), entry.get("labels", ""), entry.get("id")))
    return out


def _read_csv_entries(path: Path, need_labels: bool = True) -> list[tuple[str, object, str | None]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = set(reader.fieldnames or [])
        path_col = "path" if "path" in fields else "wav" if "wav" in fields else None
        if path_col is None or (need_labels and "labels" not in fields):
            raise UserError(f"manifest {path}: the CSV header needs 'path' (or 'wav')"
                            + (" and 'labels' columns" if need_labels else " column"))
        return [(row[path_col], row.get("labels", ""), row.get("id") or None) for row in reader]


def write_json_manifest(path: str | Path, clips: Sequence[Clip], relative_to: Path | None = None) -> None:
    """Write clips as an AST JSON datafile (paths relative to ``relative_to`` when given)."""
    data = []
    for c in clips:
        wav = c.path.relative_to(relative_to) if relative_to is not None else c.path
        data.append({"wav": wav.as_posix(), "labels": ",".join(c.labels)})
    Path(path).write_text(json.dumps({"data": data}, indent=1), encoding="utf-8")
