import json

import pytest


@pytest.mark.slow
def test_demo_fast_runs_whole_chain(tmp_path):
    """The README's demo, shrunk: every stage runs and the summary has the three models."""
    from dass_distill.demo import run_demo

    summary = run_demo(tmp_path / "work", fast=True)
    saved = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert saved["results"].keys() == summary["results"].keys() == {
        "teacher (AST)", "student with KD (DASS)", "student without KD (DASS)"}
    for r in saved["results"].values():
        assert 0.0 < r["mAP"] <= 1.0
    for folder in ("teacher", "student_kd", "student_nokd"):
        assert (tmp_path / "work" / "models" / folder / "config.json").is_file()
    assert (tmp_path / "work" / "cache.h5").is_file()
    assert len(saved["example_prediction"]["tags"]) == 3
