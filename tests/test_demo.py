import json

import pytest


@pytest.mark.slow
def test_demo_fast_runs_whole_chain(tmp_path):
    """The README's demo, shrunk: every stage runs and the summary has the three models."""
    from dass_distill.demo import run_demo

    summary = run_demo(tmp_path / "work", fast=True, seed=3)
    out = tmp_path / "work" / "seed_3"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["seed"] == 3
    assert saved["results"].keys() == summary["results"].keys() == {
        "teacher (AST)", "student with KD (DASS)", "student without KD (DASS)"}
    for r in saved["results"].values():
        assert 0.0 < r["mAP"] <= 1.0
    for folder in ("teacher", "student_kd", "student_nokd"):
        assert (out / "models" / folder / "config.json").is_file()
    import h5py

    with h5py.File(out / "cache.h5", "r") as f:  # the teacher's logits on augmented views of the students' clips
        assert int(f["views"].attrs["count"]) == 2 and f["views/params"].shape[1] == 2
    assert len(saved["example_prediction"]["tags"]) == 3


@pytest.mark.slow
def test_demo_holds_the_readme_claim(tmp_path):
    """The full demo (seed 0, about 15 minutes on 2 cores): the README reports, for seed 0,
    teacher 0.83, student with KD from 10 cached views 0.78, without KD 0.72 (the teacher
    learned from 4x the students' labelled clips); asserted loosely here (machines differ
    in the last bits, and runs with them)."""
    from dass_distill.demo import run_demo

    summary = run_demo(tmp_path / "work", seed=0)
    r = {k: v["mAP"] for k, v in summary["results"].items()}
    assert r["teacher (AST)"] >= 0.70
    assert r["student with KD (DASS)"] >= 0.60 and r["student without KD (DASS)"] >= 0.60
    assert r["student with KD (DASS)"] >= r["student without KD (DASS)"]  # KD adds what the labels lack
    assert r["teacher (AST)"] >= r["student with KD (DASS)"]
    assert min(r.values()) > summary["chance_mAP"] + 0.1
    assert not any(h["collapsed"] for h in summary["health"].values())
    example = summary["example_prediction"]  # a clip the teacher gets right, and the student too
    assert example["tags"][0][0] in example["true"]
