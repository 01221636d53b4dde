"""The teacher side of a training run: which cached teacher (or ensemble) gives the targets,
checked against the training data, and what the run records about it."""

from __future__ import annotations

from rich.markup import escape

from dass_distill.console import console
from dass_distill.data.dataset import TeacherTargets
from dass_distill.data.manifest import LabelMap, Manifest
from dass_distill.errors import UserError
from dass_distill.training.config import TrainConfig
from dass_distill.training.distributed import rank


def cached_ensembles(reader) -> dict[str, dict]:
    """Ensembles whose members a cache holds, from the members' provenance."""
    out: dict[str, dict] = {}
    for t in reader.teachers:
        ens = reader.provenance(t).get("ensemble")
        if isinstance(ens, dict) and ens.get("name"):
            out.setdefault(ens["name"], ens)
    return out


def resolve_teacher(cfg: TrainConfig, reader) -> TeacherTargets:
    """``distill.teacher`` (a cached teacher, a cached ensemble or a list) -> targets with their combination."""
    teachers, ensembles = reader.teachers, cached_ensembles(reader)
    choice = cfg.distill.teacher
    if choice is None:
        if len(teachers) == 1:
            choice = teachers[0]
        elif len(ensembles) == 1 and set(next(iter(ensembles.values()))["members"]) == set(teachers):
            choice = next(iter(ensembles))
        else:
            raise UserError(f"{cfg.distill.cache} holds teachers {teachers}"
                            + (f" and ensembles {sorted(ensembles)}" if ensembles else "")
                            + "; choose with distill.teacher=NAME (or a list of teachers)")
    ensemble = ensembles.get(choice) if isinstance(choice, str) and choice not in teachers else None
    if ensemble is not None:
        members = list(ensemble["members"])
    else:
        members = [choice] if isinstance(choice, str) else list(choice)
    for m in members:
        if m not in teachers:
            known = ", ".join(teachers) + (f"; ensembles: {', '.join(sorted(ensembles))}" if ensembles else "")
            raise UserError(f"teacher '{m}' is not in {cfg.distill.cache} (it has {known})")
    combine = cfg.distill.combine or (ensemble or {}).get("default_combine") or "prob_mean"
    weights = None
    if cfg.distill.member_weights is not None:
        extra = sorted(set(cfg.distill.member_weights) - set(members))
        if extra:
            raise UserError(f"distill.member_weights names '{extra[0]}', which is not a member ({', '.join(members)})")
        weights = [float(cfg.distill.member_weights.get(m, 0.0)) for m in members]
    elif ensemble is not None and ensemble.get("default_weights"):
        weights = list(ensemble["default_weights"])
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise UserError(f"distill.member_weights must be non-negative with a positive sum, got {weights}")
    name = choice if isinstance(choice, str) else "+".join(members)
    return TeacherTargets(reader, members, combine, weights, name=name)


def open_teacher_targets(cfg: TrainConfig, manifest: Manifest, label_map: LabelMap):
    """Open the logit cache, check it against the data; returns (targets, manifest, labels-only ids)."""
    from dass_distill.logit_cache import LogitCacheReader

    reader = LogitCacheReader(cfg.distill.cache)
    targets = resolve_teacher(cfg, reader)
    if list(reader.label_ids) != list(label_map.ids):
        raise UserError(
            f"{cfg.distill.cache} was made with a different label map ({len(reader.label_ids)} classes) than the "
            f"training data ({len(label_map)}); re-create the cache with this label map"
        )
    missing = sorted({c for m in targets.members for c in reader.coverage(manifest.ids, m)[0]})
    labels_only: set[str] = set()
    if missing:
        policy = cfg.distill.missing
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        if policy == "error":
            raise UserError(
                f"{len(missing)} training clips have no logits in {cfg.distill.cache} ({shown}); run "
                f"'dass-distill cache-check' or set distill.missing=skip or distill.missing=labels_only"
            )
        console.print(f"[yellow]{len(missing)} clips lack teacher logits ({escape(shown)}): distill.missing={policy}")
        if policy == "skip":
            keep = set(manifest.ids) - set(missing)
            manifest = manifest.subset(keep)
        else:
            labels_only = set(missing)
    return targets, manifest, labels_only


def cached_views(cfg: TrainConfig, targets: TeacherTargets, model):
    """The cache's augmented views, checked against the student's input; None for whole-clip caches."""
    from dass_distill.data.views import ViewSpec

    reader = targets.reader
    if not reader.augmented:
        return None
    spec = ViewSpec.from_dict(reader.augment)
    if spec.target_frames != cfg.data.target_length:
        raise UserError(f"{cfg.distill.cache} holds views of {spec.target_frames} frames but data.target_length is "
                        f"{cfg.data.target_length}; set data.target_length={spec.target_frames}")
    if model.sample_rate != 16000:
        raise UserError(f"cached views are replayed on the 16 kHz fbank grid; model {cfg.model} runs at "
                        f"{model.sample_rate} Hz")
    if rank() == 0:
        console.print(f"[dim]replaying {spec.count} cached views per clip (mixup {spec.mixup:g}, SpecAugment "
                      f"{spec.freq_mask}/{spec.time_mask} as the teacher saw them)")
    return spec


def teacher_summary(targets: TeacherTargets) -> dict:
    """What the run records about its teacher(s): provenance of every member and the combination."""
    prov = {m: targets.reader.provenance(m) for m in targets.members}
    if len(targets.members) == 1:
        return {"name": targets.teacher, **prov[targets.members[0]]}
    return {"name": targets.teacher, "kind": "ensemble", "members": targets.members, "combine": targets.combine,
            "weights": targets.weights, "checkpoint_sha256": {m: p.get("checkpoint_sha256") for m, p in prov.items()},
            "member_provenance": prov}
