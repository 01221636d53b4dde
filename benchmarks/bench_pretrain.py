"""Does self-supervised pretraining help distillation? Masked-patch pretraining (SSAST / SSAMBA
objective) on the demo's unlabelled training audio, then fine-tuning with KD from the demo's
cache, against KD from scratch at the same fine-tuning budget, over seeds.

    dass-distill demo --seed N --work-dir DEMO     # for N in the seeds: data, teacher, cache
    python benchmarks/bench_pretrain.py --demo-dir DEMO            # seeds 0 1 2, ~35 min on 2 cores

Per seed: ``dass-distill pretrain`` with ``demo_pretrain.yaml`` (a 4-layer, 96-wide AuM; 1000
steps over the 1600 training clips of the demo's teacher, labels unused), then two runs of
``demo_student.yaml`` with the same model on the students' 400 labelled clips with KD from
``DEMO/seed_N/cache.h5``: one from the pretraining run (``pretrained=RUN``), one from random
weights. Numbers are the final models' eval mAP on the demo's 200 eval clips, mean [min, max].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recipe_runs import console, final_map, markdown_table, print_table, shipped_config, train_run

#: The student both rows fine-tune (demo_pretrain.yaml pretrains the same one).
STUDENT = {"model": "aum_tiny", "model_args.depth": 4, "model_args.embed_dim": 96}


def pretrain_run(demo: Path, out: Path, seed: int, **overrides) -> dict:
    """``dass-distill pretrain --config demo_pretrain.yaml`` on the demo's training audio (reused when finished)."""
    from dass_distill.training.config import PretrainConfig, load_config
    from dass_distill.training.pretrain import pretrain

    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    items = {"data.train": demo / "data" / "train.json", "data.eval": demo / "data" / "eval.json", "seed": seed,
             "output_dir": out, **overrides}
    return pretrain(load_config(shipped_config("demo_pretrain.yaml"), [f"{k}={v}" for k, v in items.items()],
                                PretrainConfig))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo-dir", type=Path, required=True, help="a `dass-distill demo --work-dir` folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("bench_work/pretrain"))
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run (a smoke test; numbers mean nothing)")
    args = ap.parse_args()
    cap = {"optim.max_steps": args.max_steps} if args.max_steps else {}
    demo = args.demo_dir.resolve()
    for seed in args.seeds:
        if not (demo / f"seed_{seed}" / "cache.h5").is_file():
            raise SystemExit(f"{demo} has no seed_{seed}/cache.h5: run `dass-distill demo --seed {seed} "
                             f"--work-dir {demo}` first")
    data = {"train": demo / "data" / "train_student.json", "eval": demo / "data" / "eval.json", "seconds": 2.0}

    from dass_distill.data.manifest import load_manifest
    from dass_distill.training.label_prior import chance_map

    t0 = time.perf_counter()
    results: dict[str, list[float]] = {"scratch": [], "pretrained": []}
    collapsed = {"scratch": 0, "pretrained": 0}
    pretext = []
    for seed in args.seeds:
        work = args.work / f"seed_{seed}"
        pre = pretrain_run(demo, work / "pretrain", seed, **cap)
        pretext.append((pre["health"]["final_eval"] or {}))
        kd = {**STUDENT, "distill.cache": demo / f"seed_{seed}" / "cache.h5", **cap}
        for row, extra in (("scratch", {}), ("pretrained", {"pretrained": work / "pretrain"})):
            summary = train_run("demo_student.yaml", data, work / row, seed, **kd, **extra)
            results[row].append(final_map(summary))
            collapsed[row] += int(summary["health"]["collapsed"])
            console.print(f"seed {seed} {row}: eval mAP {results[row][-1]:.4f}")

    chance = chance_map(load_manifest(data["eval"]).targets())
    rows = [("aum_tiny d4 w96", "KD from scratch (demo_student.yaml)", results["scratch"], collapsed["scratch"]),
            ("aum_tiny d4 w96", "pretrain (demo_pretrain.yaml) -> KD, same fine-tuning",
             results["pretrained"], collapsed["pretrained"])]
    print_table("pretraining then KD vs KD from scratch", rows, chance, args.seeds)
    gains = [p - s for p, s in zip(results["pretrained"], results["scratch"])]
    console.print("gain per seed: " + ", ".join(f"{g:+.3f}" for g in gains))
    console.print("pretext, held-out (eval clips, fixed masks): " + "; ".join(
        f"seed {s}: InfoNCE {p.get('nce', float('nan')):.3f} acc {p.get('acc', float('nan')):.3f} "
        f"MSE {p.get('mse', float('nan')):.4f} (mean patch {p.get('mean_patch_mse', float('nan')):.4f})"
        for s, p in zip(args.seeds, pretext)))
    print(markdown_table(rows), flush=True)  # plain: rich would wrap the table's lines
    total = time.perf_counter() - t0
    console.print(f"chance {chance:.3f}; total {total:.0f} s")
    result = {"seeds": args.seeds, "chance_mAP": chance, "max_steps": args.max_steps, "seconds": round(total),
              "rows": [{"model": m, "recipe": r, "mAP": v, "collapsed": c} for m, r, v, c in rows],
              "gain": gains, "pretext_eval": pretext}
    (args.work / "results.json").write_text(json.dumps(result, indent=2))
    console.print(f"results in {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
