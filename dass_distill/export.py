"""``dass-distill export``: a training run (or an exported folder) -> a verified model folder.

Every export writes the Hugging Face-style folder (config.json, model.safetensors,
preprocessor_config.json, README.md model card) and, on request, graph artefacts beside
it (``model.onnx``, ``model.pt2``). Each artefact is checked against the checkpoint's
module on random filterbanks at two durations and on a real clip; an artefact whose
largest |logit difference| exceeds the tolerance is deleted and the command fails
with the numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import yaml

from dass_distill import __version__
from dass_distill.data.audio import AudioError, read_audio
from dass_distill.errors import UserError
from dass_distill.graph_export import GRAPH_FILES, capture, load_graph, save_graph
from dass_distill.inference import load_tagger
from dass_distill.frontend import KaldiFbank
from dass_distill.models import ModelFamily
from dass_distill.registry import family_for_model_type
from dass_distill.students import load_config, save_pretrained, transformers_code
from dass_distill.training.checkpoint import load_trained_model

FORMATS = ("hf", *GRAPH_FILES)
DEFAULT_ATOL = 1e-4


@dataclass
class Check:
    """One verification: an input, and the largest |logit difference| it produced."""

    format: str
    input: str
    frames: int
    max_abs_diff: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


@dataclass
class ExportReport:
    folder: Path
    family: str
    tag: str
    files: dict[str, Path] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{folder / 'config.json'} is not valid JSON ({e}); re-export the model") from None


def parse_formats(values: list[str] | None) -> list[str]:
    """``["hf", "onnx,pt2"]`` -> ``["hf", "onnx", "pt2"]`` (``hf`` is always written)."""
    wanted = [v.strip().lower() for item in (values or ["hf"]) for v in item.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in FORMATS]
    if unknown:
        raise UserError(f"unknown export format '{unknown[0]}'; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(["hf", *wanted]))


def export_run(
    source: str | Path,
    out: str | Path,
    tag: str | None = None,
    formats: list[str] | None = None,
    atol: float = DEFAULT_ATOL,
    log: Callable[[str], None] = lambda msg: None,
) -> ExportReport:
    """Export a training run's checkpoint, or add artefacts to an exported student folder.

    ``source`` is a run folder (or one of its checkpoints), or an exported DASS folder
    (then ``out`` may be that same folder: only the requested graph files are added).
    """
    formats = parse_formats(formats)
    source, out = Path(source), Path(out)
    if (source / "config.json").is_file():  # an exported folder: add graph files, or copy it elsewhere
        family = family_for_model_type(_model_type(source), source)
        module, fe, label_ids, names, config = family.load_folder(source)
        tag, provenance, target_length = "exported", config.get("training") or {}, fe.target_length
    else:
        trained, info, run_dir, tag = load_trained_model(source, tag)
        family, module, fe, target_length = trained.family, trained.module, trained.front_end, info.target_length
        label_ids, names = list(info.label_map.ids), list(info.label_map.names)
        provenance = _provenance(run_dir, tag)
    return export_module(module, family, fe, target_length, label_ids, names, provenance, out, formats, atol, tag,
                         same_folder=out.resolve() == source.resolve(), log=log)


def export_module(module: nn.Module, family: ModelFamily, fe: KaldiFbank, target_length: int, label_ids: list[str],
                  names: list[str], provenance: dict, out: Path, formats: list[str], atol: float = DEFAULT_ATOL,
                  tag: str = "", same_folder: bool = False,
                  log: Callable[[str], None] = lambda msg: None) -> ExportReport:
    """Write ``module`` as a model folder (plus requested graph files) and check each artefact
    against it; ``same_folder``: ``out`` is already this model's folder, add graph files only."""
    out = Path(out)
    module.eval()
    graph_formats = [f for f in formats if f != "hf"]
    if graph_formats and not family.graph_export:
        raise UserError(f"ONNX / pt2 export is not available for {family.name} models ({family.description}); "
                        f"they export as a Hugging Face folder (--format hf)")

    report = ExportReport(out, family.name, tag)
    if not same_folder:
        family.save_folder(module, out, fe, label_ids, names,
                           extra={"dass_distill_version": __version__, "training": provenance})
        for fmt, name in GRAPH_FILES.items():  # left by an earlier export: made from other weights
            if fmt not in formats and (out / name).is_file():
                (out / name).unlink()
                log(f"removed {out / name} of an earlier export (it would not match the new weights)")
    report.files["hf"] = out

    # The real clip comes from the manifests the provenance records (run or exported folder).
    clip_sources = [Path(m) for m in (provenance.get("eval_manifest"), provenance.get("train_manifest")) if m]
    clip, clip_name = _real_clip(clip_sources, fe)
    features = fe.one(clip, pad_to_target=not family.any_length) if clip is not None else None
    if not same_folder:
        log("checking the Hugging Face folder")
        reloaded = load_tagger(out)
        # The reloaded folder's own front end makes its features: preprocessor_config.json is checked too.
        real = (clip_name, features, reloaded.featurize(clip)) if clip is not None else None
        report.checks += _verify("hf", module, reloaded.module, target_length, real, atol, family.any_length,
                                 fe.num_mel_bins)
        if family.model_type in transformers_code.CLASSES:
            log("checking the folder's transformers code")
            hf_model, hf_features = _load_with_transformers(out)
            real = (clip_name, features, hf_features(clip)) if clip is not None else None
            report.checks += _verify("transformers", module, hf_model, target_length, real, atol, family.any_length,
                                     fe.num_mel_bins)
            report.files["transformers"] = out / transformers_code.MODELING_FILE
        bad = [c for c in report.checks if not c.ok]
        if bad:
            c = bad[0]
            what = f"{out}" if c.format == "hf" else \
                f"{out} loaded by transformers (its {transformers_code.MODELING_FILE})"
            raise UserError(f"export check failed: {what} differs from the checkpoint on {c.input} ({c.frames} "
                            f"frames) by {c.max_abs_diff:.3g} (> {c.atol:g})")
    if graph_formats:
        log(f"capturing the graph (torch.export, dynamic batch and time) for {', '.join(graph_formats)}")
        program = capture(module, target_length, fe.num_mel_bins)
    for fmt in graph_formats:
        log(f"writing and checking {GRAPH_FILES[fmt]}")
        path = save_graph(program, out, fmt)
        real = (clip_name, features, features) if clip is not None else None
        checks = _verify(fmt, module, load_graph(out, fmt, module.config.num_classes), target_length, real, atol,
                         mel_bins=fe.num_mel_bins)
        report.checks += checks
        bad = [c for c in checks if not c.ok]
        if bad:
            path.unlink()
            raise UserError(f"{fmt} export check failed, {path.name} removed: "
                            + "; ".join(f"{c.input} ({c.frames} frames) differs by {c.max_abs_diff:.3g} > {atol:g}"
                                        for c in bad))
        report.files[fmt] = path
    if family.save_folder is save_pretrained:  # the toolkit's own folder format keeps a record and a card
        _record_exports(out, report, atol, family)
    return report


def _load_with_transformers(folder: Path) -> tuple[Callable, Callable]:
    """(fbank -> logits, waveform -> features) through transformers and the folder's own code only."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its weight-loading progress bar is noise inside export's own log
    try:
        model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    features = lambda wave: torch.as_tensor(extractor(wave.numpy(), return_tensors="pt")["input_values"])[0]
    return (lambda fbank: model(input_values=fbank).logits), features


@torch.inference_mode()
def _verify(fmt: str, reference: nn.Module, candidate: Callable[[torch.Tensor], torch.Tensor], target_length: int,
            real: tuple[str, torch.Tensor, torch.Tensor] | None, atol: float, any_length: bool = True,
            mel_bins: int = 128) -> list[Check]:
    """Max |logit diff| of ``candidate`` vs ``reference`` on random filterbanks (batch 2) at
    the training length and, for models that take any length, at 2.5x it (an odd length),
    and on a real clip (``(name, reference features, candidate features)``) when there is one."""
    g = torch.Generator().manual_seed(0)
    checks = []
    for n in (target_length, target_length * 5 // 2 + 1)[: 2 if any_length else 1]:
        feats = torch.randn(2, n, mel_bins, generator=g)
        checks.append(Check(fmt, "random", n, (reference(feats) - candidate(feats)).abs().max().item(), atol))
    if real is not None:
        name, ref_in, cand_in = real
        diff = (reference(ref_in.unsqueeze(0)) - candidate(cand_in.unsqueeze(0))).abs().max().item()
        checks.append(Check(fmt, name, ref_in.shape[0], diff, atol))
    return checks


def _real_clip(manifests: list[Path], fe: KaldiFbank) -> tuple[torch.Tensor, str]:
    """The first readable clip of the manifests, else a rendered synthetic sound scene."""
    from dass_distill.data.manifest import load_manifest

    for manifest in manifests:
        try:
            clips = load_manifest(manifest).clips[:20]
        except Exception:  # a moved or deleted manifest: fall back to the next source
            continue
        for clip in clips:
            try:
                return read_audio(clip.path, fe.sampling_rate), f"clip {Path(clip.path).name}"
            except AudioError:
                continue
    from dass_distill.data.synth import render_clip

    wave = render_clip(np.random.default_rng(0), 4.0, fe.sampling_rate, num_events=2).waveform
    return torch.from_numpy(wave), "synthetic 4 s scene"


def _record_exports(folder: Path, report: ExportReport, atol: float, family: ModelFamily) -> None:
    """Note each artefact's check in config.json and the model card."""
    config = load_config(folder)
    exports = config.get("exports", {})
    # Only what this run checked is (re)recorded: an in-place export keeps earlier entries.
    for fmt in dict.fromkeys(c.format for c in report.checks):
        checks = [c for c in report.checks if c.format == fmt]
        exports[fmt] = {
            "file": report.files[fmt].name if fmt != "hf" else "model.safetensors",
            "torch": torch.__version__.split("+")[0],
            "max_abs_diff": max(c.max_abs_diff for c in checks),
            "atol": atol,
            "checked_on": sorted({c.input for c in checks}),
        }
    config["exports"] = exports
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    card = folder / "README.md"
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    card.write_text(_model_card((config.get("training") or {}).get("model") or family.name, family, names,
                                config.get("training") or {}, exports))


def _provenance(run_dir: Path, tag: str) -> dict:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    distill, optim, augment = cfg.get("distill", {}), cfg.get("optim", {}), cfg.get("augment", {})
    teacher = summary.get("teacher") or {}
    return {
        "run": str(run_dir.resolve()),
        "checkpoint_tag": tag,
        "model": cfg.get("model"),
        "train_manifest": cfg.get("data", {}).get("train"),
        "eval_manifest": cfg.get("data", {}).get("eval"),
        "cache": distill.get("cache"),
        "teacher": teacher.get("name") or distill.get("teacher"),
        "teacher_checkpoint_sha256": teacher.get("checkpoint_sha256"),
        "kd_weight": distill.get("kd_weight") if distill.get("cache") else 0.0,
        "temperature": distill.get("temperature"),
        "recipe": {k: optim.get(k) for k in ("batch_size", "lr", "betas", "weight_decay", "warmup_steps", "epochs",
                                              "max_steps", "lr_decay_start_epoch", "lr_decay")}
        | {"freq_mask": augment.get("freq_mask"), "time_mask": augment.get("time_mask"),
           "target_length": cfg.get("data", {}).get("target_length")},
        "steps": summary.get("steps"),
        "best_eval_mAP": summary.get("best_mAP"),
    }


def _model_card(name: str, family: ModelFamily, labels: list[str], p: dict, exports: dict | None = None) -> str:
    kd = f"distilled from `{p.get('teacher') or 'the cached teacher'}` via `{p.get('cache')}` " \
         f"(w={p.get('kd_weight')}, T={p.get('temperature')})" if p.get("cache") else "trained on labels only"
    best = f"{p['best_eval_mAP']:.4f}" if isinstance(p.get("best_eval_mAP"), float) else "n/a"
    recipe = ", ".join(f"{k}={v}" for k, v in (p.get("recipe") or {}).items() if v is not None) or "n/a"
    origin = f"""- training run: `{p.get('run')}` (checkpoint `{p.get('checkpoint_tag')}`, {p.get('steps')} steps)
- training data: `{p.get('train_manifest')}`; evaluation data: `{p.get('eval_manifest')}`
- recipe: {recipe}
- best eval mAP during training: {best}"""
    if p.get("imported_from"):
        kd = "imported from a released checkpoint with `dass-distill import` (no training here)"
        origin = f"- checkpoint: `{p['imported_from']}` (sha256 `{p.get('checkpoint_sha256')}`)"
    rows = "\n".join(f"| {fmt} | `{e['file']}` | {e['max_abs_diff']:.2e} | {e['atol']:g} | {', '.join(e['checked_on'])} |"
                     for fmt, e in (exports or {}).items() if e.get("max_abs_diff") is not None)
    files = f"""
## Files and their checks

Largest |logit difference| against the training checkpoint (export time, CPU):

| format | file | max abs diff | tolerance | inputs |
|---|---|---|---|---|
{rows}
""" if rows else ""
    onnx = """
ONNX Runtime, features from `preprocessor_config.json` (any number of frames >= 33):

```python
import onnxruntime, numpy as np
session = onnxruntime.InferenceSession("model.onnx")
logits = session.run(None, {"fbank": fbank.astype(np.float32)})[0]  # fbank: (batch, frames, 128)
```
""" if exports and "onnx" in exports else ""
    transformers = """
With transformers alone (the folder's own torch-only code; reading files needs `ffmpeg`):

```python
from transformers import pipeline
tagger = pipeline("audio-classification", model="this/folder", trust_remote_code=True)
print(tagger("clip.wav", top_k=5))   # or {"array": waveform, "sampling_rate": rate}
```
""" if family.model_type in transformers_code.CLASSES else ""
    return f"""---
library_name: dass-distill
tags: [audio-classification, audio-tagging, state-space-model, knowledge-distillation]
---
# {name} audio tagger

A {family.name} model ({family.description}) exported by dass-distill {__version__}:
{kd}.

- classes: {len(labels)} ({", ".join(labels[:8])}{", ..." if len(labels) > 8 else ""})
{origin}
{files}
## Use

```python
from dass_distill.inference import load_tagger
tagger = load_tagger("this/folder")          # backend="onnx" or "pt2" for the graph files
print(tagger.tag_file("clip.wav"))
```

or `dass-distill predict this/folder recording.wav` (long recordings get a timeline).
{transformers}{onnx}"""
