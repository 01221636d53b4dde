"""Teacher specs on the command line: ``ast:PATH`` or a small YAML file naming one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from .ast import ASTTeacher
from .base import CheckpointError, Teacher

_LOADERS: dict[str, Callable[[Path, str], Teacher]] = {
    "ast": lambda path, name: ASTTeacher.from_folder(path, name=name),
}


def teacher_kinds() -> list[str]:
    return sorted(_LOADERS)


def load_teacher(spec: str, name: str | None = None) -> Teacher:
    """Load a teacher from ``KIND:PATH`` (e.g. ``ast:runs/teacher/export``) or ``teacher.yaml``.

    The YAML form holds ``kind``, ``path`` (relative to the YAML file) and optionally ``name``.
    """
    if spec.endswith((".yaml", ".yml")) and Path(spec).is_file():
        doc = yaml.safe_load(Path(spec).read_text()) or {}
        if not isinstance(doc, dict) or "kind" not in doc or "path" not in doc:
            raise CheckpointError(f"teacher file {spec} needs 'kind' and 'path' keys")
        path = Path(doc["path"])
        if not path.is_absolute():
            path = Path(spec).parent / path
        kind, name = str(doc["kind"]), name or doc.get("name")
    else:
        kind, sep, raw = spec.partition(":")
        if not sep or not raw:
            raise CheckpointError(f"teacher spec '{spec}' should look like KIND:PATH (kinds: {', '.join(teacher_kinds())})")
        path = Path(raw)
    if kind not in _LOADERS:
        raise CheckpointError(f"unknown teacher kind '{kind}' in '{spec}'; known kinds: {', '.join(teacher_kinds())}")
    if not path.exists():
        raise CheckpointError(f"{kind} teacher: checkpoint {path} not found")
    return _LOADERS[kind](path, name or kind)
