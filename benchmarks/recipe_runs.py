"""Shared helpers of the recipe benchmarks: datasets, training runs and result tables.

A run is ``dass-distill train`` in this process (``load_config`` + ``train``) with the
shipped configs; its number is the eval mAP of the final model (not the best
evaluation, which would select on the eval set).
"""

from __future__ import annotations

import json
import statistics
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def shipped_config(name: str) -> Path:
    return Path(str(resources.files("dass_distill") / "configs" / name))


def prepare_data(spec: str, work: Path) -> dict:
    """``synth`` (the demo's dataset, made here) or a folder with train.json, eval.json and
    class_labels_indices.csv (e.g. benchmarks/spoken_words.py's output)."""
    if spec == "synth":
        from dass_distill.data.synth import make_synthetic_dataset

        info = make_synthetic_dataset(work / "synth", duration=2.0)
        return {"name": "synth", "train": Path(info["train_manifest"]), "eval": Path(info["eval_manifest"]),
                "seconds": 2.0}
    folder = Path(spec)
    for f in ("train.json", "eval.json", "class_labels_indices.csv"):
        if not (folder / f).is_file():
            raise SystemExit(f"{folder} lacks {f}: pass 'synth' or a folder with train.json, eval.json and "
                             f"class_labels_indices.csv")
    from dass_distill.data.audio import read_audio
    from dass_distill.data.manifest import load_manifest

    first = load_manifest(folder / "train.json").clips[0]
    seconds = round(read_audio(first.path, 16000).numel() / 16000, 2)
    return {"name": folder.name, "train": folder / "train.json", "eval": folder / "eval.json", "seconds": seconds}


def train_run(config: str, data: dict, out: Path, seed: int, **overrides) -> dict:
    """Train with a shipped config on ``data``; returns the run summary (reused when finished)."""
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train

    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    items = {"data.train": data["train"], "data.eval": data["eval"],
             "data.target_length": int(round(data["seconds"] * 100)), "seed": seed, "output_dir": out, **overrides}
    return train(load_config(shipped_config(config), [f"{k}={v}" for k, v in items.items()]))


def pretrain_list(audio: Path, data: dict, work: Path) -> Path:
    """A .txt list of the unlabelled ``audio`` and the labelled training clips (labels unused)."""
    from dass_distill.data.manifest import load_audio_list

    out = work / "pretrain_audio.txt"
    paths = [str(c.path) for c in load_audio_list(audio).clips + load_audio_list(data["train"]).clips]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(paths) + "\n")
    return out


def pretrain_run(audio: Path, data: dict, out: Path, seed: int, config: str = "teacher_pretrain.yaml",
                 **overrides) -> Path:
    """Masked-patch pretraining with a shipped config on ``audio`` (held-out pretext losses on the
    eval clips); returns the run folder (reused when finished)."""
    from dass_distill.training.config import PretrainConfig, load_config
    from dass_distill.training.pretrain import pretrain

    if not (out / "summary.json").is_file():
        items = {"data.train": audio, "data.eval": data["eval"],
                 "data.target_length": int(round(data["seconds"] * 100)), "seed": seed, "output_dir": out, **overrides}
        pretrain(load_config(shipped_config(config), [f"{k}={v}" for k, v in items.items()], PretrainConfig))
    return out


def final_map(summary: dict) -> float:
    """Eval mAP of the model at the end of training."""
    return float(summary["health"]["final_eval_mAP"])


def export_final(run_dir: Path, out: Path) -> Path:
    """Export a run's final checkpoint (not its best evaluation)."""
    from dass_distill.export import export_run

    if not (out / "config.json").is_file():
        tag = (run_dir / "checkpoints" / "latest").read_text().strip()
        export_run(run_dir, out, tag=tag)
    return out


def summarise(values: list[float]) -> str:
    """``mean [min, max]`` over seeds."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def print_table(title: str, rows: list[tuple[str, str, list[float], int]], chance: float, seeds: list[int]) -> None:
    """Rows of (model, recipe, per-seed mAPs, collapsed runs)."""
    table = Table(title=escape(f"{title}: eval mAP, mean [min, max] over seeds {seeds}; chance {chance:.3f}"))
    for col in ("model", "recipe", "eval mAP", "collapsed"):
        table.add_column(col, justify="right" if col in ("eval mAP", "collapsed") else "left")
    for model, recipe, values, collapsed in rows:
        table.add_row(model, recipe, summarise(values), str(collapsed))
    console.print(table)


def markdown_table(rows: list[tuple[str, str, list[float], int]]) -> str:
    lines = ["| model | recipe | eval mAP, mean [min, max] | per seed | collapsed runs |", "|---|---|---|---|---|"]
    for model, recipe, values, collapsed in rows:
        lines.append(f"| {model} | {recipe} | {summarise(values)} | {', '.join(f'{v:.3f}' for v in values)} "
                     f"| {collapsed} |")
    return "\n".join(lines)
