"""Teacher specs on the command line: ``KIND:PATH`` or a small YAML file.

``ast:PATH`` takes an original AST ``.pth`` or a transformers folder, ``htsat:PATH``
the Lightning ``.ckpt`` of HTS-AT or the folder of one trained here, ``sslam:PATH`` SSLAM's fairseq ``.pt``, a
``.safetensors`` file or a Hugging Face folder. A YAML file names one teacher::

    kind: htsat
    path: HTSAT_AudioSet_Saved_1.ckpt   # relative to the YAML file
    name: htsat                         # optional; default: the kind
    allow_pickle: false                 # only for trusted files that need full unpickling
    long_clips: {long: windows, hop_seconds: 5.0, aggregate: mean}
    # ast only: input_tdim (frames the .pth was trained on, default 1024), num_heads

or an ensemble, whose members are cached separately and combined at training time::

    kind: ensemble
    name: ast_htsat
    members: [ast:ast.pth, {kind: htsat, path: htsat.ckpt}]
    combine: prob_mean                  # default for training; prob_mean or logit_mean
    weights: [0.5, 0.5]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from dass_distill.checkpoint_files import CheckpointError

from .ast import ASTTeacher
from .base import ClipPolicy, Teacher
from .ensemble import Ensemble


def _load_ast(path: Path, name: str, allow_pickle: bool, input_tdim: int = 1024, num_heads: int | None = None) -> Teacher:
    if path.is_dir():
        return ASTTeacher.from_folder(path, name=name)
    return ASTTeacher.from_pth(path, name=name, input_tdim=input_tdim, num_heads=num_heads, allow_pickle=allow_pickle)


def _load_htsat(path: Path, name: str, allow_pickle: bool) -> Teacher:
    from .htsat import HTSATFbankTeacher, HTSATTeacher

    if path.is_dir():  # an HTS-AT trained here and exported
        return HTSATFbankTeacher.from_folder(path, name=name)
    return HTSATTeacher.from_checkpoint(path, name=name, allow_pickle=allow_pickle)


def _load_sslam(path: Path, name: str, allow_pickle: bool) -> Teacher:
    from .sslam import SSLAMTeacher

    return SSLAMTeacher.from_checkpoint(path, name=name, allow_pickle=allow_pickle)


_LOADERS: dict[str, Callable[..., Teacher]] = {"ast": _load_ast, "htsat": _load_htsat, "sslam": _load_sslam}
_COMMON_KEYS = {"kind", "path", "name", "allow_pickle", "long_clips"}
_EXTRA_KEYS = {"ast": {"input_tdim", "num_heads"}, "htsat": set(), "sslam": set()}
_ENSEMBLE_KEYS = {"kind", "name", "members", "combine", "weights", "long_clips", "allow_pickle"}


def teacher_kinds() -> list[str]:
    return sorted(_LOADERS)


def load_teacher(spec: str | dict, name: str | None = None, allow_pickle: bool = False,
                 clip_policy: ClipPolicy | None = None) -> Teacher | Ensemble:
    """A teacher (or an ensemble) from ``KIND:PATH``, a YAML file, or the dict such a file holds.

    ``clip_policy`` applies to every teacher that does not set ``long_clips`` itself.
    """
    if isinstance(spec, dict):
        return _from_doc(spec, Path.cwd(), "teacher spec", name, allow_pickle, clip_policy)
    if spec.endswith((".yaml", ".yml")) and Path(spec).is_file():
        try:
            doc = yaml.safe_load(Path(spec).read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(f"teacher file {spec} is not valid YAML ({str(e).splitlines()[0]})") from None
        return _from_doc(doc, Path(spec).parent, spec, name, allow_pickle, clip_policy)
    kind, sep, raw = spec.partition(":")
    if not sep or not raw:
        raise CheckpointError(f"teacher spec '{spec}' should look like KIND:PATH or TEACHER.yaml "
                              f"(kinds: {', '.join(teacher_kinds())})")
    return _build(kind, Path(raw), name or kind, spec, allow_pickle, clip_policy, {})


def _build(kind: str, path: Path, name: str, where: str, allow_pickle: bool, policy: ClipPolicy | None,
           options: dict[str, Any]) -> Teacher:
    if kind not in _LOADERS:
        raise CheckpointError(f"unknown teacher kind '{kind}' in {where}; known kinds: {', '.join(teacher_kinds())}"
                              + (" (ensembles are described in a YAML file)" if kind == "ensemble" else ""))
    if not path.exists():
        raise CheckpointError(f"{kind} teacher: checkpoint {path} not found")
    teacher = _LOADERS[kind](path, name, allow_pickle, **options)
    if policy is not None:
        teacher.set_clip_policy(policy)
    return teacher


def _policy(doc: dict, where: str, default: ClipPolicy | None) -> ClipPolicy | None:
    raw = doc.get("long_clips")
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: 'long_clips' must be a mapping like {{long: windows, hop_seconds: 5}}")
    try:
        return ClipPolicy(**raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad 'long_clips' ({e})") from None


def _from_doc(doc: Any, base: Path, where: str, name: str | None, allow_pickle: bool,
              policy: ClipPolicy | None) -> Teacher | Ensemble:
    if isinstance(doc, str):  # an ensemble member: KIND:PATH or a YAML file, relative to this file
        if doc.endswith((".yaml", ".yml")):
            path = Path(doc) if Path(doc).is_absolute() else base / doc
            if not path.is_file():
                raise CheckpointError(f"{where}: teacher file {path} not found")
            return load_teacher(str(path), name, allow_pickle, policy)
        kind, _, raw = doc.partition(":")
        doc = {"kind": kind, "path": raw}
    if not isinstance(doc, dict) or "kind" not in doc:
        raise CheckpointError(f"{where} needs a 'kind' key ({', '.join(teacher_kinds())} or ensemble)")
    kind = str(doc["kind"])
    allow_pickle = bool(doc.get("allow_pickle", allow_pickle))
    policy = _policy(doc, where, policy)
    if kind == "ensemble":
        unknown = sorted(set(doc) - _ENSEMBLE_KEYS)
        if unknown or not isinstance(doc.get("members"), list) or not doc["members"]:
            raise CheckpointError(f"{where}: an ensemble needs a non-empty 'members' list"
                                  + (f"; unknown key '{unknown[0]}'" if unknown else ""))
        members = [_from_doc(m, base, f"{where} member {i}", None, allow_pickle, policy)
                   for i, m in enumerate(doc["members"])]
        if any(isinstance(m, Ensemble) for m in members):
            raise CheckpointError(f"{where}: ensembles cannot be nested")
        try:
            return Ensemble(name or str(doc.get("name", "ensemble")), members, str(doc.get("combine", "prob_mean")),
                            doc.get("weights"))
        except ValueError as e:
            raise CheckpointError(f"{where}: {e}") from None
    if "path" not in doc:
        raise CheckpointError(f"{where} needs 'kind' and 'path' keys")
    unknown = sorted(set(doc) - _COMMON_KEYS - _EXTRA_KEYS.get(kind, set()))
    if unknown:
        raise CheckpointError(f"{where}: unknown key '{unknown[0]}' for a {kind} teacher")
    path = Path(str(doc["path"]))
    if not path.is_absolute():
        path = base / path
    options = {k: doc[k] for k in _EXTRA_KEYS.get(kind, set()) if k in doc}
    return _build(kind, path, name or str(doc.get("name", kind)), where, allow_pickle, policy, options)
