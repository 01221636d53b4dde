"""``dass-distill demo``: the whole pipeline on the embedded synthetic dataset, on CPU.

synth -> AST teacher (labels only) -> export teacher -> logit cache of augmented views ->
DASS student with KD -> DASS student without KD (same budget) -> export -> predict -> eval table.

The teacher learns from four times the labelled clips the students get (the first
quarter of its training set): a stand-in for what distillation is for, a teacher trained
on a large corpus passing what it knows to a small model that has only a small labelled
set. (A teacher trained on the students' own 400 clips knows nothing their labels do not
say, and its KD gained nothing on average: README, "When does KD help?".)

The cache holds the teacher's logits on ten augmented views of each student clip (mixup,
time masks), which the KD student replays exactly. On the clips it was trained on, a teacher
nearly repeats their labels; on mixed and masked views its targets say what the labels do not
(function matching, Beyer et al. 2022). Measured over seeds 0-2: README, "Demo results".
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from dass_distill.console import console

# The teacher's labelled clips, the evaluation clips, and the students' share of the teacher's clips.
FULL = {"num_train": 1600, "num_eval": 200, "duration": 2.0}
STUDENT_SHARE = 4
# fast=True: a smoke run for tests (tiny data, few steps); the numbers mean nothing.
FAST = {"num_train": 48, "num_eval": 24, "duration": 2.0, "teacher_steps": 6, "student_steps": 6}
# Views of each student clip in the cache: the demo student's own augmentation (time masks, no
# frequency masks: demo_student.yaml says why), mixup on half.
VIEWS = {"count": 10, "mixup": 0.5, "freq_mask": 0, "time_mask": 40}
FAST_VIEWS = 2


def _config(name: str) -> Path:
    return Path(str(resources.files("dass_distill") / "configs" / name))


def run_demo(work: Path, fast: bool = False, seed: int = 0) -> dict:
    """Run the demo in ``work``; ``seed`` seeds the teacher's and the students' training (the
    dataset is the same for every seed, so runs with different seeds are comparable)."""
    from dass_distill.caching import build_cache
    from dass_distill.data.manifest import load_manifest, write_json_manifest
    from dass_distill.data.synth import make_synthetic_dataset
    from dass_distill.data.views import ViewSpec
    from dass_distill.evaluation import evaluate_tagger
    from dass_distill.export import export_run
    from dass_distill.inference import load_tagger
    from dass_distill.teachers import load_teacher
    from dass_distill.training.config import load_config
    from dass_distill.training.label_prior import chance_map
    from dass_distill.training.loop import train

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"seed_{seed}"  # runs, cache and models of this seed; the data is shared
    if (out / "runs").is_dir():
        console.print(f"[yellow]{escape(str(out / 'runs'))} exists: finished runs are reused and interrupted ones resumed; "
                      f"delete {escape(str(out))} for a fresh run")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    console.rule("1/7 synthetic dataset")
    data_args = {k: (FAST if fast else FULL)[k] for k in ("num_train", "num_eval", "duration")}
    info = make_synthetic_dataset(work / "data", **data_args)
    train_m, eval_m = Path(info["train_manifest"]), Path(info["eval_manifest"])
    # The students' labelled set: the first quarter of the teacher's (every class, round-robin).
    student_m = train_m.with_name("train_student.json")
    student_clips = load_manifest(train_m).clips[: info["num_train"] // STUDENT_SHARE]
    write_json_manifest(student_m, student_clips, relative_to=student_m.parent)
    console.print(f"teacher: {info['num_train']} labelled clips; students: {len(student_clips)} of them; "
                  f"{info['num_eval']} eval clips, {info['num_classes']} classes")
    stage("synth")

    frames = int(info["duration"] * 100)
    common = [f"data.eval={eval_m}", f"data.target_length={frames}", f"seed={seed}"]
    if fast:
        common += ["augment.time_mask=20"]

    console.rule("2/7 teacher: AST trained on labels")
    teacher_over = common + [f"data.train={train_m}", f"output_dir={out / 'runs' / 'teacher'}"]
    if fast:
        teacher_over.append(f"optim.max_steps={FAST['teacher_steps']}")
    runs = {"teacher": train(load_config(_config("demo_teacher.yaml"), teacher_over))}
    export_run(out / "runs" / "teacher", out / "models" / "teacher", tag=final_tag(out / "runs" / "teacher"))
    stage("teacher")

    console.rule("3/7 logit cache: the teacher on augmented views of the students' clips")
    cache_path = out / "cache.h5"
    cache_path.unlink(missing_ok=True)
    teacher = load_teacher(f"ast:{out / 'models' / 'teacher'}", name="ast_demo")
    views = ViewSpec(**{**VIEWS, "count": FAST_VIEWS if fast else VIEWS["count"]}, seed=seed,
                     target_frames=frames)
    build_cache([teacher], load_manifest(student_m), cache_path, num_workers=0, command="dass-distill demo",
                views=views)
    stage("cache")

    students = {}
    for label, kd in (("student_kd", True), ("student_nokd", False)):
        console.rule(f"{4 if kd else 5}/7 student {'with' if kd else 'without'} distillation")
        over = common + [f"data.train={student_m}", f"output_dir={out / 'runs' / label}"]
        over += [f"distill.cache={cache_path}"] if kd else ["distill.kd_weight=0"]
        if fast:
            over.append(f"optim.max_steps={FAST['student_steps']}")
        runs[label] = train(load_config(_config("demo_student.yaml"), over))
        export_run(out / "runs" / label, out / "models" / label, tag=final_tag(out / "runs" / label))
        students[label] = out / "models" / label
    stage("students")

    console.rule("6/7 predict with the exported student")
    clip, tags = example_prediction(out / "models" / "teacher", students["student_kd"], load_manifest(eval_m))
    tagger = load_tagger(students["student_kd"])
    names = dict(zip(tagger.label_ids, tagger.label_names))
    true_names = [names[m] for m in clip.labels]
    console.print(escape(f"{clip.path.name}: true {true_names}; the student predicts "
                         + ", ".join(f"{n} {s:.2f}" for n, s in tags)))

    console.rule("7/7 evaluation")
    results = {}
    for label, folder in (("teacher (AST)", out / "models" / "teacher"),
                          ("student with KD (DASS)", students["student_kd"]),
                          ("student without KD (DASS)", students["student_nokd"])):
        m = evaluate_tagger(folder, eval_m)
        results[label] = {"mAP": m["mAP"], "d_prime": m["d_prime"], "model": str(folder)}
    stage("predict+eval")

    chance = chance_map(load_manifest(eval_m).targets())
    table = Table(title=f"demo (seed {seed}): eval mAP on {info['num_eval']} synthetic clips, chance {chance:.3f}")
    table.add_column("model")
    table.add_column("mAP", justify="right")
    table.add_column("d'", justify="right")
    for label, r in results.items():
        table.add_row(label, f"{r['mAP']:.4f}", f"{r['d_prime']:.3f}")
    console.print(table)
    collapsed = [name for name, run in runs.items() if run["health"]["collapsed"]]
    if collapsed and not fast:
        console.print(f"[red]collapsed: {', '.join(collapsed)} (see the warnings above); these numbers are not "
                      f"what the demo should show")
    summary = {"seed": seed, "results": results, "chance_mAP": chance, "timings_s": timings, "fast": fast,
               "work_dir": str(out.resolve()), "health": {name: run["health"] for name, run in runs.items()},
               "example_prediction": {"clip": str(clip.path), "true": true_names, "tags": tags}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"total {sum(timings.values()):.0f} s; summary written to {escape(str(out / 'summary.json'))}")
    return summary


def final_tag(run_dir: Path) -> str:
    """The checkpoint at the end of training: the demo reports the final models, not the best
    evaluation (choosing on the eval set would flatter the numbers)."""
    return (run_dir / "checkpoints" / "latest").read_text().strip()


@torch.inference_mode()
def example_prediction(teacher_folder: Path, student_folder: Path, manifest, top_k: int = 3):
    """An eval clip whose top tag both the teacher and the student get right (else one the
    teacher gets right, else the first clip), with the student's top tags."""
    from dass_distill.data.audio import read_audio
    from dass_distill.inference import load_tagger

    teacher, student = load_tagger(teacher_folder), load_tagger(student_folder)
    fallback = None
    for clip in manifest.clips:
        top = lambda tagger: tagger.label_ids[int(tagger.scores(read_audio(clip.path, tagger.sample_rate)).argmax())]
        if top(teacher) not in clip.labels:
            continue
        fallback = fallback or clip
        if top(student) in clip.labels:
            return clip, student.tag_file(clip.path, top_k=top_k)
    chosen = fallback or manifest.clips[0]
    return chosen, student.tag_file(chosen.path, top_k=top_k)
