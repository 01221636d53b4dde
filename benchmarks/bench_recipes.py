"""Do the shipped recipes learn? Each against a plain CNN trained on the same data with the
same budget, over several seeds, in one run.

    python benchmarks/bench_recipes.py                                  # the demo's synthetic set
    python benchmarks/spoken_words.py --out data/spoken_words          # needs espeak-ng
    python benchmarks/bench_recipes.py --data data/spoken_words --seeds 0 1 2
    python benchmarks/spoken_words.py --out data/spoken_words --unlabelled 2400
    python benchmarks/bench_recipes.py --data data/spoken_words --pretrain-audio data/spoken_words/unlabelled.txt

Rows, per seed (numbers: eval mAP of the final model):

* the teacher recipe (``demo_teacher.yaml``, AST), the same recipe with ``htsat_tiny`` (HTS-AT's
  windowed attention, the teacher for small sets) and ``cnn_baseline`` under that recipe
  (steps, batch, learning rate, schedule, augmentation);
* with ``--pretrain-audio``: the AST pretrained on that unlabelled audio plus the labelled
  training clips (``teacher_pretrain.yaml``, SSAST's masked patches), then fine-tuned with
  the teacher recipe at time stride 8 (``pretrained=RUN``);
* the student recipe (``demo_student.yaml``, DASS) without KD, with KD from that seed's
  teacher (``--kd-teacher``, default the HTS-AT; its logits cached once), and ``cnn_baseline``
  under the student recipe (``--teachers-only`` skips these).

A run counts as collapsed when ``train`` judged it so (training loss at the label prior
or eval mAP at chance; see dass_distill/training/health.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recipe_runs import (console, export_final, final_map, markdown_table, prepare_data, pretrain_list, pretrain_run,
                         print_table, train_run)


# --kd-teacher: (run folder of each seed, teacher kind for load_teacher)
KD_TEACHERS = {"ast_tiny": ("teacher", "ast"), "htsat_tiny": ("teacher_htsat", "htsat")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synth", help="'synth' or a folder with train.json / eval.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("bench_work/recipes"))
    ap.add_argument("--no-kd", action="store_true", help="skip the teacher's cache and the KD student")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run (a smoke test; numbers mean nothing)")
    ap.add_argument("--pretrain-audio", type=Path, default=None,
                    help="unlabelled audio (folder, .txt list or manifest): add the pretrained-teacher row")
    ap.add_argument("--teachers-only", action="store_true", help="only the teacher-recipe rows")
    ap.add_argument("--kd-teacher", choices=sorted(KD_TEACHERS), default="htsat_tiny",
                    help="the teacher-recipe run whose logits the KD student learns from")
    args = ap.parse_args()
    cap = {"optim.max_steps": args.max_steps} if args.max_steps else {}

    from dass_distill.caching import build_cache
    from dass_distill.data.manifest import load_manifest
    from dass_distill.teachers import load_teacher
    from dass_distill.training.label_prior import chance_map

    work = args.work
    data = prepare_data(args.data, work)
    work = work / data["name"]
    chance = chance_map(load_manifest(data["eval"]).targets())
    runs: dict[tuple[str, str], list[dict]] = {}
    pretrain_audio = pretrain_list(args.pretrain_audio, data, work) if args.pretrain_audio else None
    t0 = time.perf_counter()
    for seed in args.seeds:
        s = work / f"seed_{seed}"
        add = lambda key, summary: runs.setdefault(key, []).append(summary)
        add(("ast_tiny", "teacher recipe"), train_run("demo_teacher.yaml", data, s / "teacher", seed, **cap))
        add(("htsat_tiny", "teacher recipe"), train_run("demo_teacher.yaml", data, s / "teacher_htsat", seed,
                                                        model="htsat_tiny", **cap))
        add(("cnn_baseline", "teacher recipe"), train_run("demo_teacher.yaml", data, s / "cnn_teacher_recipe", seed,
                                                          model="cnn_baseline", **cap))
        if pretrain_audio:
            pre = pretrain_run(pretrain_audio, data, s / "teacher_pretrain", seed, **cap)
            add(("ast_tiny", "pretrain, then teacher recipe (time stride 8)"),
                train_run("demo_teacher.yaml", data, s / "teacher_pretrained", seed, pretrained=pre,
                          **{"model_args.time_stride": 8}, **cap))
        if args.teachers_only:
            continue
        add(("dass_tiny", "student recipe, no KD"), train_run("demo_student.yaml", data, s / "student_nokd", seed,
                                                              **{"distill.kd_weight": 0}, **cap))
        if not args.no_kd:
            run, kind = KD_TEACHERS[args.kd_teacher]
            cache = s / f"{run}_cache.h5"
            if not cache.is_file():
                teacher = load_teacher(f"{kind}:{export_final(s / run, s / f'{run}_export')}", name=kind)
                build_cache([teacher], load_manifest(data["train"]), cache, num_workers=0, command="bench_recipes")
            add(("dass_tiny", f"student recipe, KD from {args.kd_teacher}"),
                train_run("demo_student.yaml", data, s / f"student_kd_{run}", seed, **{"distill.cache": cache}, **cap))
        add(("cnn_baseline", "student recipe, no KD"), train_run("demo_student.yaml", data, s / "cnn_student_recipe",
                                                                 seed, model="cnn_baseline",
                                                                 **{"distill.kd_weight": 0}, **cap))
    rows = [(model, recipe, [final_map(r) for r in summaries], sum(r["health"]["collapsed"] for r in summaries))
            for (model, recipe), summaries in runs.items()]
    print_table(f"recipes on {data['name']}", rows, chance, args.seeds)
    result = {"data": data["name"], "seeds": args.seeds, "chance_mAP": chance, "minutes": (time.perf_counter() - t0) / 60,
              "rows": [{"model": m, "recipe": r, "mAP": v, "collapsed": c} for m, r, v, c in rows]}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(markdown_table(rows), flush=True)  # plain: rich would wrap the table's lines
    (work / "results.md").write_text(markdown_table(rows) + "\n")
    console.print(f"results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
