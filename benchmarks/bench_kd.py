"""What each distillation option buys: DASS-tiny students with and without KD at the same
budget, over several seeds, on the demo's synthetic set.

    python benchmarks/bench_kd.py                   # seeds 0 1 2, about 1.5 hours on 2 CPU cores
    python benchmarks/bench_kd.py --option-seeds 0  # options on seed 0 only: about 30 minutes

Two teachers of different kinds are trained once on the labels (seed 0): the demo's AST
(``demo_teacher.yaml``) and an SSLAM/EAT ViT (``sslam_tiny``, same recipe). Their logits
on the training clips are cached once, dense (both teachers, so the ensemble is a
training-time choice) and as AST top-3 (3 of the 12 classes kept plus the rest value).
Every student row then uses ``demo_student.yaml`` (dass_tiny, 1800 steps) and changes
one thing; numbers are the eval mAP of the final model, mean [min, max] over seeds. The
first two rows (no KD, the demo's KD) always run on ``--seeds``; the option rows on
``--option-seeds`` (default: the same seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from recipe_runs import console, export_final, final_map, markdown_table, prepare_data, print_table, train_run

#: (row label, overrides of demo_student.yaml; CACHE / TOPK stand for the cache files)
STUDENT_ROWS = [
    ("no KD (labels only)", {"distill.kd_weight": 0}),
    ("KD from AST, sigmoid BCE term (the demo's recipe)", {"distill.cache": "CACHE", "distill.teacher": "ast"}),
    ("KD from AST, softmax KL term (DASS's)", {"distill.cache": "CACHE", "distill.teacher": "ast",
                                               "distill.kd_loss": "kl_softmax"}),
    ("KD from AST, top-3 storage", {"distill.cache": "TOPK"}),
    ("KD from AST, T = 2", {"distill.cache": "CACHE", "distill.teacher": "ast", "distill.temperature": 2.0}),
    ("KD from AST, label-free", {"distill.cache": "CACHE", "distill.teacher": "ast", "distill.labels": False}),
    ("KD from SSLAM", {"distill.cache": "CACHE", "distill.teacher": "sslam"}),
    ("KD from AST + SSLAM ensemble (prob_mean)", {"distill.cache": "CACHE", "distill.teacher": "ast_sslam"}),
]


@torch.inference_mode()
def teacher_eval_map(folders: dict[str, Path], eval_manifest: Path) -> dict[str, float]:
    """Eval mAP of each teacher and of their prob_mean ensemble, through the teachers' own front ends."""
    from dass_distill.data.audio import read_audio
    from dass_distill.data.manifest import load_manifest
    from dass_distill.metrics import average_precision
    from dass_distill.teachers import combine_logits, load_teacher

    manifest = load_manifest(eval_manifest)
    logits = {}
    for kind, folder in folders.items():
        teacher = load_teacher(f"{kind}:{folder}", name=kind)
        logits[kind] = torch.cat([teacher.logits([read_audio(c.path, teacher.sample_rate)]) for c in manifest.clips])
    logits["ast_sslam"] = combine_logits(torch.stack([logits["ast"], logits["sslam"]]), "prob_mean")
    y = manifest.targets()
    return {k: float(np.nanmean(average_precision(v.numpy(), y))) for k, v in logits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--option-seeds", type=int, nargs="+", default=None,
                    help="seeds of the option rows (default: --seeds)")
    ap.add_argument("--work", type=Path, default=Path("bench_work/kd"))
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run (a smoke test; numbers mean nothing)")
    args = ap.parse_args()
    cap = {"optim.max_steps": args.max_steps} if args.max_steps else {}

    from dass_distill.caching import build_cache
    from dass_distill.data.manifest import load_manifest
    from dass_distill.teachers import load_teacher
    from dass_distill.training.label_prior import chance_map

    t0 = time.perf_counter()
    work = args.work
    data = prepare_data("synth", work)
    train_manifest = load_manifest(data["train"])
    teachers = {}
    for kind, model in (("ast", "ast_tiny"), ("sslam", "sslam_tiny")):
        run = train_run("demo_teacher.yaml", data, work / f"teacher_{kind}", 0, model=model, **cap)
        teachers[kind] = export_final(work / f"teacher_{kind}", work / f"teacher_{kind}_export")
        console.print(f"teacher {kind}: eval mAP {final_map(run):.3f}")
    caches = {"CACHE": work / "cache_dense.h5", "TOPK": work / "cache_ast_top3.h5"}
    if not caches["CACHE"].is_file():
        ensemble = load_teacher({"kind": "ensemble", "name": "ast_sslam",
                                 "members": [f"ast:{teachers['ast']}", f"sslam:{teachers['sslam']}"]})
        build_cache([ensemble], train_manifest, caches["CACHE"], num_workers=0, command="bench_kd")
    if not caches["TOPK"].is_file():
        build_cache([load_teacher(f"ast:{teachers['ast']}", name="ast")], train_manifest, caches["TOPK"],
                    num_workers=0, command="bench_kd", storage="topk:3")
    teacher_maps = teacher_eval_map(teachers, data["eval"])

    rows = []
    option_seeds = args.option_seeds or args.seeds
    for label, overrides in STUDENT_ROWS:
        seeds = args.seeds if len(rows) < 2 else option_seeds
        over = {k: str(caches[v]) if v in caches else v for k, v in overrides.items()}
        row_dir = work / f"student_{len(rows)}"
        summaries = [train_run("demo_student.yaml", data, row_dir / f"seed_{seed}", seed, **over, **cap)
                     for seed in seeds]
        recipe = f"{label} (seeds {', '.join(map(str, seeds))})"
        rows.append(("dass_tiny", recipe, [final_map(s) for s in summaries],
                     sum(s["health"]["collapsed"] for s in summaries)))
    rows += [(f"teacher {k}", "labels only, seed 0", [v], 0) for k, v in teacher_maps.items()]
    chance = chance_map(load_manifest(data["eval"]).targets())
    print_table("KD options (synthetic set)", rows, chance, args.seeds)
    print(markdown_table(rows), flush=True)  # plain: rich would wrap the table's lines
    (work / "results.md").write_text(markdown_table(rows) + "\n")
    result = {"seeds": args.seeds, "option_seeds": option_seeds, "chance_mAP": chance,
              "minutes": (time.perf_counter() - t0) / 60,
              "rows": [{"model": m, "recipe": r, "mAP": v, "collapsed": c} for m, r, v, c in rows]}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    console.print(f"results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
