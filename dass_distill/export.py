"""``dass-distill export``: a training checkpoint -> a self-contained, verified model folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from dass_distill import __version__
from dass_distill.errors import UserError
from dass_distill.inference import load_tagger
from dass_distill.students import DassFeatureExtractor, save_pretrained
from dass_distill.teachers import save_ast_folder
from dass_distill.training.checkpoint import load_trained_model


@dataclass
class ExportReport:
    folder: Path
    family: str
    tag: str
    max_abs_diff: float


def export_run(checkpoint: str | Path, out: str | Path, tag: str | None = None, atol: float = 1e-4) -> ExportReport:
    """Write the run's chosen checkpoint as a model folder and check it reproduces the checkpoint.

    Students become a DASS folder (config.json, model.safetensors, preprocessor_config.json,
    README.md); AST teachers a transformers AST folder usable as ``--teacher ast:OUT``.
    """
    trained, info, run_dir, tag = load_trained_model(Path(checkpoint), tag)
    out = Path(out)
    lm = info.label_map
    if info.family == "dass":
        provenance = _provenance(run_dir, tag)
        fe = DassFeatureExtractor(target_length=info.target_length)
        save_pretrained(trained.module, out, fe, list(lm.ids), list(lm.names),
                        extra={"dass_distill_version": __version__, "training": provenance})
        (out / "README.md").write_text(_model_card(info.name, lm.names, provenance))
    else:
        save_ast_folder(trained.module, out)
    diff = verify_export(trained.module, out, info.target_length)
    if diff > atol:
        raise UserError(f"export check failed: {out} differs from the checkpoint by {diff:.3g} (> {atol:g})")
    return ExportReport(out, info.family, tag, diff)


@torch.inference_mode()
def verify_export(module: torch.nn.Module, folder: Path, target_length: int, seed: int = 0) -> float:
    """Largest |logit difference| between the checkpoint's module and the reloaded folder."""
    tagger = load_tagger(folder)
    g = torch.Generator().manual_seed(seed)
    # Random features at the training length, and a random waveform through the full front end.
    feats = torch.randn(2, target_length, 128, generator=g)
    diff = (module.eval()(feats) - tagger.module(feats)).abs().max().item()
    wave = torch.randn(tagger.sample_rate * 2, generator=g) * 0.1
    clip = tagger.featurize(wave).unsqueeze(0)
    return max(diff, (module(clip) - tagger.module(clip)).abs().max().item())


def _provenance(run_dir: Path, tag: str) -> dict:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    distill = cfg.get("distill", {})
    return {
        "run": str(run_dir.resolve()),
        "checkpoint_tag": tag,
        "model": cfg.get("model"),
        "train_manifest": cfg.get("data", {}).get("train"),
        "cache": distill.get("cache"),
        "teacher": (summary.get("teacher") or {}).get("name") or distill.get("teacher"),
        "teacher_checkpoint_sha256": (summary.get("teacher") or {}).get("checkpoint_sha256"),
        "kd_weight": distill.get("kd_weight") if distill.get("cache") else 0.0,
        "temperature": distill.get("temperature"),
        "steps": summary.get("steps"),
        "best_eval_mAP": summary.get("best_mAP"),
    }


def _model_card(name: str, labels: tuple[str, ...], p: dict) -> str:
    kd = f"distilled from `{p['teacher'] or 'the cached teacher'}` via `{p['cache']}` (w={p['kd_weight']}, T={p['temperature']})" \
        if p.get("cache") else "trained on labels only"
    best = f"{p['best_eval_mAP']:.4f}" if isinstance(p.get("best_eval_mAP"), float) else "n/a"
    return f"""---
library_name: dass-distill
tags: [audio-classification, audio-tagging, state-space-model, knowledge-distillation]
---
# {name} audio tagger

A DASS (VMamba-style 2D selective-scan) student exported by dass-distill {__version__}:
{kd}.

- classes: {len(labels)} ({", ".join(labels[:8])}{", ..." if len(labels) > 8 else ""})
- training run: `{p['run']}` (checkpoint `{p['checkpoint_tag']}`, {p['steps']} steps)
- training data: `{p['train_manifest']}`
- best eval mAP during training: {best}

```python
from dass_distill.inference import load_tagger
tagger = load_tagger("this/folder")
print(tagger.tag_file("clip.wav"))
```
"""
