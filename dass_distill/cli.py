"""The ``dass-distill`` command line."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.text import Text

from dass_distill import reports
from dass_distill.console import console

app = typer.Typer(
    name="dass-distill",
    help="Distil audio transformers into small, fast state-space audio taggers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _quiet_libraries() -> None:
    from dass_distill.training.distributed import ensure_accelerator_env

    ensure_accelerator_env()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.utils.logging.disable_progress_bar()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def print_error(error: Exception) -> None:
    """One line, ``error: MESSAGE``; the message is plain text (brackets in paths, clip ids or
    pip extras like ``dass-distill[onnx]`` are printed as they are, not read as markup)."""
    console.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)


def user_errors(fn):
    """Report user-caused errors as one red line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dass_distill.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as e:  # anything else is a bug: its traceback shows
            print_error(e)
            raise typer.Exit(2) from None

    return wrapper


# --------------------------------------------------------------------------- data
@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option(help="folder to write the dataset into")] = Path("synth_data"),
    num_train: Annotated[int, typer.Option(help="training clips")] = 400,
    num_eval: Annotated[int, typer.Option(help="evaluation clips")] = 100,
    duration: Annotated[float, typer.Option(help="clip length in seconds")] = 3.0,
    seed: int = 0,
) -> None:
    """Write the embedded synthetic sound-event dataset (wavs, label map, train/eval manifests)."""
    from dass_distill.console import make_progress
    from dass_distill.data.synth import make_synthetic_dataset

    with make_progress() as progress:
        task = progress.add_task("synth", total=num_train + num_eval)
        info = make_synthetic_dataset(out, num_train=num_train, num_eval=num_eval, duration=duration, seed=seed,
                                      progress=lambda n: progress.update(task, completed=n))
    console.print(reports.line(f"wrote {info['num_train']} train + {info['num_eval']} eval clips, "
                               f"{info['num_classes']} classes, to {out}  (manifests: {info['train_manifest']}, "
                               f"{info['eval_manifest']})"))


@app.command()
def models() -> None:
    """List student and teacher configurations with their parameter counts (527 classes)."""
    from dass_distill.models import family_of, list_models, parameter_count

    rows = [(name, family_of(name).description, parameter_count(name)) for name in list_models()]
    console.print(reports.models_table(rows))


# --------------------------------------------------------------------------- cache
@app.command()
@user_errors
def cache(
    teacher: Annotated[list[str], typer.Option(help="teacher spec KIND:PATH (ast:MODEL.pth or folder, htsat:MODEL.ckpt, sslam:MODEL.pt) or a teacher / ensemble YAML; repeatable")],
    data: Annotated[Path, typer.Option(help="manifest (AST JSON datafile or CSV)")],
    out: Annotated[Path, typer.Option(help="HDF5 cache file to write")],
    label_map: Annotated[Optional[Path], typer.Option(help="class_labels_indices.csv (default: beside the manifest)")] = None,
    batch_size: int = 16,
    num_workers: int = 2,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "auto",
    long_clips: Annotated[str, typer.Option(help="clips longer than a teacher's window: 'windows' (overlapping windows, logits averaged) or 'truncate' (first window)")] = "windows",
    hop_seconds: Annotated[float, typer.Option(help="start-to-start distance of the windows for long clips")] = 5.0,
    allow_pickle: Annotated[bool, typer.Option(help="load checkpoints that need full unpickling; only for files you trust")] = False,
    layout: Annotated[str, typer.Option(help="'chunked' (LZF-compressed chunks) or 'contiguous' (uncompressed, memory-mapped random reads: fastest for training)")] = "contiguous",
    storage: Annotated[str, typer.Option(help="'dense' (every logit, fp16) or 'topk:K' (K largest logits + one value for the rest; topk:20 is 83 bytes per view with replay)")] = "dense",
    views: Annotated[int, typer.Option(help="augmented views per clip, replayed exactly by training (0 = the whole clip, no augmentation)")] = 0,
    view_mixup: Annotated[float, typer.Option(help="probability that a view mixes in another clip")] = 0.5,
    view_mixup_alpha: Annotated[float, typer.Option(help="mixup weight lambda ~ Beta(alpha, alpha)")] = 10.0,
    view_freq_mask: Annotated[int, typer.Option(help="SpecAugment frequency mask width limit (mel bins)")] = 48,
    view_time_mask: Annotated[int, typer.Option(help="SpecAugment time mask width limit (10 ms frames)")] = 192,
    view_shift: Annotated[int, typer.Option(help="largest circular time shift (10 ms frames)")] = 0,
    view_gain_db: Annotated[float, typer.Option(help="largest gain change (dB)")] = 0.0,
    view_seed: int = 0,
    target_frames: Annotated[int, typer.Option(help="student input length in frames; a view is this much audio")] = 1024,
    block_clips: Annotated[int, typer.Option(help="clips per block: the unit of work, of resuming and of sharding")] = 512,
    procs: Annotated[int, typer.Option(help="start this many processes with torchrun (one per GPU, or CPU workers); "
                                            "or run the command under torchrun / deepspeed yourself")] = 1,
    overwrite: bool = False,
) -> None:
    """Run teachers over a manifest once and store their logits in an HDF5 cache.

    Each teacher sees the audio at its own sample rate through its own front end; the
    long-clip policy and everything else that shaped the logits is kept as provenance.
    Interrupted runs resume: rerun the same command (finished blocks are kept in OUT.parts/).
    """
    _quiet_libraries()
    from dass_distill.errors import UserError

    if procs > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from dass_distill.training.distributed import relaunch_with_torchrun

        relaunch_with_torchrun(_without_option(sys.argv[1:], "--procs"), procs)
    if procs < 1:
        raise UserError(f"--procs must be at least 1, got {procs}")
    from dass_distill.caching import build_cache
    from dass_distill.data.manifest import load_manifest
    from dass_distill.data.views import ViewSpec
    from dass_distill.teachers import ClipPolicy, load_teacher

    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite or choose another --out")
    try:
        policy = ClipPolicy(long=long_clips, hop_seconds=hop_seconds)
        spec = ViewSpec(count=views, seed=view_seed, mixup=view_mixup, mixup_alpha=view_mixup_alpha,
                        freq_mask=view_freq_mask, time_mask=view_time_mask, max_shift_frames=view_shift,
                        max_gain_db=view_gain_db, target_frames=target_frames) if views else None
    except ValueError as e:
        raise UserError(str(e)) from None
    if views < 0:
        raise UserError(f"--views must be 0 (whole clips) or a positive count, got {views}")
    manifest = load_manifest(data, label_map)
    teachers = [load_teacher(spec_, allow_pickle=allow_pickle, clip_policy=policy) for spec_ in teacher]
    dev = ("cuda" if _cuda() else "cpu") if device == "auto" else device
    if layout not in ("chunked", "contiguous"):
        raise UserError(f"--layout must be 'chunked' or 'contiguous', not '{layout}'")
    report = build_cache(teachers, manifest, out, batch_size=batch_size, num_workers=num_workers, device=dev,
                         layout=layout, views=spec, storage=storage, block_clips=block_clips)
    if not report.written:
        return  # a worker rank: rank 0 merged and reports
    console.print(reports.cache_written_line(out, report))


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (the launcher re-runs the rest)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


@app.command("cache-info")
@user_errors
def cache_info(path: Path) -> None:
    """Show what a logit cache holds: teachers, rows, views, storage and provenance."""
    from dass_distill.logit_cache import LogitCacheReader
    from dass_distill.logit_cache.info import summarize

    for t in reports.cache_info_tables(path, summarize(LogitCacheReader(path))):
        console.print(t)


@app.command("cache-check")
@user_errors
def cache_check(
    cache: Annotated[Path, typer.Argument(help="HDF5 logit cache")],
    data: Annotated[Path, typer.Option(help="manifest the cache should cover")],
    label_map: Annotated[Optional[Path], typer.Option(help="class_labels_indices.csv (default: beside the manifest)")] = None,
    verify: Annotated[int, typer.Option(help="rerun each teacher on this many random cached clips and compare")] = 0,
    teacher: Annotated[Optional[list[str]], typer.Option(help="teacher spec to verify with (default: the checkpoint in the provenance); repeatable")] = None,
    atol: Annotated[float, typer.Option(help="largest logit difference allowed beyond float16 rounding")] = 1e-3,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ... for --verify")] = "cpu",
    show: Annotated[int, typer.Option(help="clip ids listed per gap")] = 10,
    seed: int = 0,
    allow_pickle: Annotated[bool, typer.Option(help="load checkpoints that need full unpickling; only for files you trust")] = False,
    output: Annotated[Optional[Path], typer.Option(help="write the full report (every clip id) as JSON")] = None,
) -> None:
    """Report clips of a manifest without cached logits (and the reverse), label-map
    mismatches, and with --verify N how far the live teacher is from the stored logits.

    Exits 1 when anything does not match, so scripts can gate training on it.
    """
    _quiet_libraries()
    import dataclasses

    from dass_distill.cache_check import check_cache
    from dass_distill.data.manifest import load_manifest

    manifest = load_manifest(data, label_map)
    report = check_cache(cache, manifest, verify, teacher, atol, seed, device, allow_pickle,
                         log=lambda msg: console.print(reports.plain(msg, "dim")))
    for item in reports.cache_check_report(cache, data, report, show):
        console.print(item, soft_wrap=True)
    if output:
        output.write_text(json.dumps({**dataclasses.asdict(report), "cache": str(report.cache), "ok": report.ok},
                                     indent=2))
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- train
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
@user_errors
def train(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="training config YAML")] = None,
    model: Annotated[Optional[str], typer.Option(help="model name (dass_tiny, dass_small, ast_tiny, ...); overrides the config")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="run folder; overrides the config")] = None,
    hostfile: Annotated[Optional[Path], typer.Option(help="DeepSpeed hostfile for multi-node training")] = None,
    procs: Annotated[Optional[int], typer.Option(help="processes on this machine (default: one per GPU, else 1); "
                                                      "several CPU processes use gloo")] = None,
) -> None:
    """Train a student (or an AST teacher) under DeepSpeed. Extra KEY=VALUE args override the config.

    One process on CPU; with several GPUs (or --procs N, or --hostfile) the command re-runs
    itself under the deepspeed launcher, one process per GPU, on every host of the hostfile.
    """
    from dass_distill.training.config import TrainConfig
    from dass_distill.training.loop import train as run_training

    summary = _launch(ctx, config, model, output_dir, hostfile, procs, TrainConfig, run_training)
    console.print(reports.training_done_line(summary))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
@user_errors
def pretrain(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="pretraining config YAML")] = None,
    model: Annotated[Optional[str], typer.Option(help="patch-token model (ssamba_tiny, aum_small, ast_tiny, ...); "
                                                      "overrides the config")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="run folder; overrides the config")] = None,
    hostfile: Annotated[Optional[Path], typer.Option(help="DeepSpeed hostfile for multi-node training")] = None,
    procs: Annotated[Optional[int], typer.Option(
        help="processes on this machine (default: one per GPU, else 1)")] = None,
) -> None:
    """Self-supervised masked-patch pretraining (SSAST / SSAMBA) of an AuM or SSAMBA student or an
    AST teacher on unlabelled audio. Extra KEY=VALUE args override the config; fine-tune the run with
    ``train pretrained=RUN``.
    """
    from dass_distill.training.config import PretrainConfig
    from dass_distill.training.pretrain import pretrain as run_pretraining

    summary = _launch(ctx, config, model, output_dir, hostfile, procs, PretrainConfig, run_pretraining)
    console.print(reports.pretraining_done_line(summary))


def _launch(ctx, config, model, output_dir, hostfile, procs, schema, run) -> dict:
    """Load the config (file + overrides), relaunch under the deepspeed launcher when several
    processes are asked for, and run."""
    _quiet_libraries()
    from dass_distill.errors import UserError
    from dass_distill.training.config import load_config
    from dass_distill.training.distributed import launched_by_launcher, relaunch_with_deepspeed

    overrides = list(ctx.args)
    if model:
        overrides.append(f"model={model}")
    if output_dir:
        overrides.append(f"output_dir={output_dir}")
    cfg = load_config(config, overrides, schema)
    if procs is not None and procs < 1:
        raise UserError(f"--procs must be at least 1, got {procs}")
    if hostfile is not None and not hostfile.is_file():
        raise UserError(f"hostfile {hostfile} not found; pass a DeepSpeed hostfile (lines 'HOST slots=N')")
    n_proc = procs if procs is not None else _gpu_count()
    if not launched_by_launcher() and (n_proc > 1 or hostfile is not None):
        relaunch_with_deepspeed(_without_option(sys.argv[1:], "--procs"), max(1, n_proc),
                                str(hostfile) if hostfile else None)
    return run(cfg)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --------------------------------------------------------------------------- export / use
@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="training run folder (or one of its checkpoints), or an exported student folder")],
    out: Annotated[Path, typer.Option(help="folder to write the exported model to (may be the exported folder itself)")],
    format: Annotated[Optional[list[str]], typer.Option("--format", "-f", help="hf (always written), onnx, pt2; repeatable or comma-separated")] = None,
    tag: Annotated[Optional[str], typer.Option(help="checkpoint tag (default: best, else latest; 'averaged': the weight average)")] = None,
    atol: Annotated[float, typer.Option(help="largest |logit difference| against the checkpoint that an artefact may show")] = 1e-4,
) -> None:
    """Export a trained model as a Hugging Face-style folder, plus ONNX / torch.export files on request.

    Every artefact is checked against the checkpoint on random inputs at two durations and
    on a real clip; one that differs by more than --atol is removed and the command fails.
    """
    _quiet_libraries()
    from dass_distill.export import export_run

    report = export_run(checkpoint, out, tag, format, atol, log=lambda msg: console.print(reports.plain(msg, "dim")))
    console.print(reports.export_table(report))


@app.command("import")
@user_errors
def import_(
    checkpoint: Annotated[Path, typer.Argument(help="released student checkpoint (DASS .pth, AuM, fine-tuned SSAMBA)")],
    model: Annotated[str, typer.Option(help="the checkpoint's model: dass_small, dass_medium, aum_base, ssamba_tiny, ...")],
    labels: Annotated[Path, typer.Option(help="its label map, class_labels_indices.csv (AudioSet's for AudioSet models)")],
    out: Annotated[Path, typer.Option(help="folder to write the model to")],
    target_length: Annotated[int, typer.Option(help="frames per clip the front end makes (1024 ~ 10 s, as AudioSet)")]
    = 1024,
    format: Annotated[Optional[list[str]], typer.Option("--format", "-f", help="hf (always written), onnx, pt2")] = None,
    atol: Annotated[float, typer.Option(help="largest |logit difference| an artefact may show")] = 1e-4,
    allow_pickle: Annotated[bool, typer.Option(help="read a checkpoint that needs pickle (trusted files only)")]
    = False,
) -> None:
    """Turn a released student checkpoint into a model folder (as `export` writes), checked
    against the loaded checkpoint, so predict / evaluate / timelines work with no training."""
    _quiet_libraries()
    from dass_distill.importing import import_checkpoint

    report = import_checkpoint(checkpoint, model, labels, out, target_length, format, atol, allow_pickle,
                               log=lambda msg: console.print(reports.plain(msg, "dim")))
    console.print(reports.export_table(report))


@app.command()
@user_errors
def predict(
    model: Annotated[Path, typer.Argument(help="exported model folder")],
    audio: Annotated[list[Path], typer.Argument(help="audio files (any format soundfile reads)")],
    top_k: int = 5,
    output: Annotated[Optional[Path], typer.Option(help="also write results as JSON (CSV when the name ends in .csv)")] = None,
    window: Annotated[float, typer.Option(help="window length in seconds for long recordings")] = 10.0,
    hop: Annotated[float, typer.Option(help="start-to-start distance of the windows in seconds")] = 5.0,
    timeline: Annotated[Optional[bool], typer.Option("--timeline/--no-timeline", help="tag window by window (default: for files longer than --window)")] = None,
    batch_size: Annotated[int, typer.Option(help="windows per forward pass (memory grows with it, not with the file)")] = 1,
    backend: Annotated[str, typer.Option(help="torch (safetensors weights), onnx (model.onnx via ONNX Runtime) or pt2 (model.pt2)")] = "torch",
    plot: Annotated[Optional[Path], typer.Option(
        help="draw the spectrogram and the top tags' scores (over time for a timeline) to this PNG; with several "
             "files, one PNG each, named after the file")] = None,
) -> None:
    """Print the top tags of each audio file; long recordings get a timeline of windows.

    A timeline reads the file one window at a time, so memory does not grow with the
    recording's length. Clip-level tags of a timeline are the max over its windows.
    """
    _quiet_libraries()
    from dass_distill.data.audio import read_audio
    from dass_distill.errors import UserError
    from dass_distill.inference import load_tagger
    from dass_distill.timeline import audio_duration, tag_timeline, write_csv

    if not window > 0 or not hop > 0 or batch_size < 1:
        raise UserError("--window and --hop must be positive and --batch-size at least 1")
    tagger = load_tagger(model, backend)
    results: dict[str, object] = {}
    csv_rows: list[dict] = []
    failures = 0
    for path in audio:
        try:
            use_timeline = timeline if timeline is not None else audio_duration(path) > window
            if use_timeline:
                tl = tag_timeline(tagger, path, window, hop, batch_size=batch_size)
                console.print(reports.timeline_table(tl, top_k))
                results[str(path)] = tl.to_dict(top_k)
                csv_rows += tl.csv_rows(top_k)
                if plot:
                    _plot_prediction(plot, path, len(audio), tagger, tl.clip_scores, tl, top_k)
                continue
            scores = tagger.scores(read_audio(path, tagger.sample_rate))
            tags = tagger.top(scores, top_k)
            if plot:
                _plot_prediction(plot, path, len(audio), tagger, scores, None, top_k)
        except UserError as e:
            print_error(e)
            results[str(path)] = {"error": str(e)}
            csv_rows.append({"file": str(path), "error": str(e)})
            failures += 1
            continue
        console.print(reports.tags_table(path, tags))
        results[str(path)] = [{"label": n, "score": s} for n, s in tags]
        ids = dict(zip(tagger.label_names, tagger.label_ids))
        csv_rows += [{"file": str(path), "rank": r + 1, "label_id": ids.get(n, ""), "label": n, "score": f"{s:.6f}"}
                     for r, (n, s) in enumerate(tags)]
    if output:
        output.write_text(write_csv(csv_rows) if output.suffix.lower() == ".csv" else json.dumps(results, indent=2))
    if failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="exported model folder")],
    data: Annotated[Path, typer.Option(help="manifest to evaluate on")],
    label_map: Annotated[Optional[Path], typer.Option(help="class_labels_indices.csv (default: beside the manifest)")] = None,
    batch_size: int = 16,
    output: Annotated[Optional[Path], typer.Option(help="write metrics as JSON, with per-class AP/AUC (per_class)")] = None,
    backend: Annotated[str, typer.Option(help="torch, onnx or pt2 (which of the folder's files runs)")] = "torch",
    per_class_csv: Annotated[Optional[Path], typer.Option(
        help="write per-class AP and AUC as CSV (index, label_id, label, positives, ap, auc)")] = None,
    top: Annotated[int, typer.Option(
        help="show the N best and N worst classes by AP (all of them when 2N covers every class)", min=0)] = 10,
    plot: Annotated[Optional[Path], typer.Option(
        help="draw per-class AP bars and the best and worst classes' precision-recall curves to this PNG")] = None,
) -> None:
    """mAP, mAUC, d-prime and per-class AP of an exported model on a manifest."""
    _quiet_libraries()
    from dass_distill.evaluation import evaluate_tagger, per_class_csv as per_class_csv_text

    result = evaluate_tagger(model, data, label_map, batch_size, backend=backend, with_scores=True)
    scores = result.pop("scores")
    if plot:
        from dass_distill.plots import plot_evaluation

        plot_evaluation(plot, result["per_class"], scores.scores, scores.targets, title=f"{model.name} on {data.name}")
        console.print(f"plot written to {escape(str(plot))}")
    console.print(reports.evaluation_overview(result, f"{model} on {data}"))
    for table in reports.evaluation_class_tables(result["per_class"], top):
        console.print(table)
    if output:
        output.write_text(json.dumps(result, indent=2))
    if per_class_csv:
        per_class_csv.write_text(per_class_csv_text(result["per_class"]))


def _plot_prediction(plot: Path, path: Path, files: int, tagger, scores, tl, top_k: int) -> None:
    from dass_distill.plots import plot_prediction

    out = plot if files == 1 else plot.with_name(f"{plot.stem}_{path.stem}{plot.suffix or '.png'}")
    plot_prediction(out, path, tagger.label_names, scores, tl, top_k, tagger.sample_rate)
    console.print(f"plot written to {escape(str(out))}")


@app.command()
@user_errors
def embed(
    model: Annotated[Path, typer.Argument(help="exported student folder (DASS, AuM, SSAMBA)")],
    audio: Annotated[list[Path], typer.Argument(help="audio files (any format soundfile reads)")],
    output: Annotated[Path, typer.Option(help="embeddings file: .h5 (HDF5) or .npz")],
) -> None:
    """Clip embeddings and timestamped frame embeddings of audio files (HEAR-style; in Python:
    dass_distill.hear)."""
    _quiet_libraries()
    from dass_distill.embeddings import Embedder, write_embeddings

    embedder = Embedder(model)
    results = {}
    for path in audio:
        results[str(path)] = e = embedder.file(path)
        console.print(f"{escape(str(path))}: clip {tuple(e.clip.shape[1:])}, {e.frames.shape[1]} frames every "
                      f"{float(e.timestamps_ms[1] - e.timestamps_ms[0]) if e.frames.shape[1] > 1 else 0:g} ms")
    write_embeddings(output, results, str(model))
    console.print(f"{len(results)} file(s) written to {escape(str(output))}")


# --------------------------------------------------------------------------- demo
@app.command()
@user_errors
def demo(
    work_dir: Annotated[Path, typer.Option(help="folder for data, runs, cache and exports")] = Path("demo_work"),
    fast: Annotated[bool, typer.Option(help="a much smaller run (smoke test), not the reported numbers")] = False,
    seed: Annotated[int, typer.Option(help="seed of the teacher's and students' training (same data for every seed)")] = 0,
) -> None:
    """The whole chain on the embedded dataset: synth -> teacher -> cache -> students -> export -> predict."""
    _quiet_libraries()
    from dass_distill.demo import run_demo

    run_demo(work_dir, fast=fast, seed=seed)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
