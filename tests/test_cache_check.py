"""``dass-distill cache-check``: coverage against a manifest, label maps, and verification of
stored logits against the live teacher (including a tampered cache and a changed checkpoint)."""

import json
import shutil

import h5py
import pytest
import torch

from teacher_checkpoints import original_ast_state_dict, write_original_teachers
from helpers import cli


@pytest.fixture(scope="module")
def ast_cache(tmp_path_factory, synth_data):
    folder = tmp_path_factory.mktemp("cache_check")
    ckpt = write_original_teachers(folder)["ast"]
    out = folder / "ast.h5"
    cli("cache", "--teacher", f"ast:{ckpt}", "--data", synth_data["train_manifest"], "--out", out,
        "--num-workers", 0, "--batch-size", 8)
    return out, ckpt


def _check(*args):
    proc = cli("cache-check", *args, check=False)
    return proc.returncode, proc.stderr + proc.stdout


def test_full_coverage_and_live_teacher_agree(ast_cache, synth_data, tmp_path):
    cache, _ = ast_cache
    code, out = _check(cache, "--data", synth_data["train_manifest"], "--verify", 6, "--output", tmp_path / "r.json")
    assert code == 0 and "cache matches the manifest" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["coverage"][0]["cached"] == 24 and not report["coverage"][0]["missing"]
    (v,) = report["verifications"]
    # the teacher was rebuilt from the checkpoint named in the provenance; only fp16 rounding separates them
    assert v["teacher"] == "ast" and len(v["clips"]) == 6 and 0 < v["max_abs_diff"] < 0.01 and v["max_excess"] <= 1e-3


def test_coverage_gaps_both_ways(ast_cache, synth_data, tmp_path):
    cache, _ = ast_cache
    code, out = _check(cache, "--data", synth_data["eval_manifest"], "--show", 2, "--output", tmp_path / "r.json")
    assert code == 1 and "12 clip(s) in the manifest but without logits" in out and "24 clip(s) cached but not" in out
    cov = json.loads((tmp_path / "r.json").read_text())["coverage"][0]
    assert len(cov["missing"]) == 12 and all(c.startswith("eval") for c in cov["missing"])
    assert len(cov["extra"]) == 24 and all(c.startswith("train") for c in cov["extra"])


def test_tampered_logits_fail_verification(ast_cache, synth_data, tmp_path):
    cache = tmp_path / "tampered.h5"
    shutil.copy(ast_cache[0], cache)
    with h5py.File(cache, "r+") as f:
        ds = f["teachers/ast/logits"]
        ds[3] = ds[3] + 0.5  # one clip's row off by 0.5
    code, out = _check(cache, "--data", synth_data["train_manifest"], "--verify", 24, "--output", tmp_path / "r.json")
    assert code == 1 and "NO" in out
    (v,) = json.loads((tmp_path / "r.json").read_text())["verifications"]
    assert v["max_abs_diff"] == pytest.approx(0.5, abs=0.02)


def test_verification_refuses_another_or_changed_checkpoint(ast_cache, synth_data, tmp_path):
    cache, ckpt = ast_cache
    other = tmp_path / "other.pth"
    torch.save(original_ast_state_dict(dim=64, depth=1, classes=12, fstride=16, tstride=16, seed=99), other)
    code, out = _check(cache, "--data", synth_data["train_manifest"], "--verify", 2, "--teacher", f"ast:{other}")
    assert code == 2 and "made none of the logits" in out

    moved = tmp_path / "moved.h5"
    shutil.copy(cache, moved)
    backup = tmp_path / "backup.pth"
    shutil.copy(ckpt, backup)
    try:
        shutil.copy(other, ckpt)  # the checkpoint file changed after caching
        code, out = _check(moved, "--data", synth_data["train_manifest"], "--verify", 2)
        assert code == 2 and "has changed since the cache was made" in out
    finally:
        shutil.copy(backup, ckpt)
    # the right checkpoint passed explicitly is matched by its sha256
    code, out = _check(cache, "--data", synth_data["train_manifest"], "--verify", 2, "--teacher", f"ast:{backup}")
    assert code == 0, out


def test_label_map_mismatch_is_reported(ast_cache, synth_data, tmp_path):
    from pathlib import Path

    labels = (Path(synth_data["train_manifest"]).parent / "class_labels_indices.csv").read_text().rstrip("\n")
    other_map = tmp_path / "labels.csv"
    other_map.write_text(labels + '\n12,/m/extra,"An extra class"\n')  # 13 classes, the manifest still loads
    code, out = _check(ast_cache[0], "--data", synth_data["train_manifest"], "--label-map", other_map)
    assert code == 1 and "label map differs: the cache has 12 classes, the manifest's label map 13" in out
