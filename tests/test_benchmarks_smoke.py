"""The recipe and KD benchmarks run end to end (every run capped at one step: the numbers
mean nothing, the point is that the scripts keep working)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_recipes.py", "bench_kd.py"])
def test_benchmark_runs(tmp_path, script):
    from helpers import clean_env

    proc = subprocess.run([sys.executable, str(BENCH / script), "--seeds", "0", "--max-steps", "1",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**clean_env(), "DS_ACCELERATOR": "cpu", "DASS_DISTILL_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["seeds"] == [0] and len(results["rows"]) >= 5
    assert all(0.0 <= v <= 1.0 for row in results["rows"] for v in row["mAP"])


@pytest.mark.slow
def test_recipe_benchmark_with_a_pretrained_teacher(tmp_path):
    """--pretrain-audio adds the pretrain-then-fine-tune teacher row; --teachers-only stops there."""
    import numpy as np
    import soundfile as sf
    from helpers import clean_env

    audio = tmp_path / "unlabelled"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        sf.write(audio / f"u{k}.wav", (0.1 * rng.standard_normal(32000)).astype("float32"), 16000)
    proc = subprocess.run([sys.executable, str(BENCH / "bench_recipes.py"), "--seeds", "0", "--max-steps", "1",
                           "--pretrain-audio", str(audio), "--teachers-only", "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=900,
                          env={**clean_env(), "DS_ACCELERATOR": "cpu", "DASS_DISTILL_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert [(r["model"], r["recipe"]) for r in results["rows"]] == [
        ("ast_tiny", "teacher recipe"), ("htsat_tiny", "teacher recipe"), ("cnn_baseline", "teacher recipe"),
        ("ast_tiny", "pretrain, then teacher recipe (time stride 8)")]
    pre = next(tmp_path.rglob("teacher_pretrain"))
    assert json.loads((pre / "model.json").read_text())["task"] == "pretrain"
    assert len((tmp_path / "w" / "synth" / "pretrain_audio.txt").read_text().split()) == 3 + 400


def _bench(*args: str) -> str:
    from helpers import clean_env

    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900,
                          env={**clean_env(), "DS_ACCELERATOR": "cpu", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_audio_mamba_cpu_benchmarks_run():
    """The issue-16 CPU benchmarks on small shapes: the d_state-16 scan against its sequential
    reference, and the Audio Mamba students' forward next to DASS-small and AST-base."""
    out = _bench(str(BENCH / "bench_selective_scan.py"), "--batch", "1", "--dim", "64", "--length", "96",
                 "--d-state", "16", "--groups", "2", "--scan-length", "0", "--repeats", "1", "--threads", "2")
    assert "selective_scan_fused_cpu  fwd" in out and "N 16, G 2" in out
    out = _bench(str(BENCH / "bench_student_cpu.py"), "--models", "aum_tiny", "ssamba_tiny", "--seconds", "2",
                 "--repeats", "1")
    assert "aum_tiny" in out and "ssamba_tiny" in out and "ast_base" in out


@pytest.mark.slow
def test_pretraining_benchmark_runs(tmp_path):
    """bench_pretrain.py on a --fast demo folder: pretrain, then KD from scratch and from the run."""
    from helpers import cli

    cli("demo", "--fast", "--work-dir", tmp_path / "demo")
    _bench(str(BENCH / "bench_pretrain.py"), "--demo-dir", str(tmp_path / "demo"), "--seeds", "0",
           "--max-steps", "2", "--work", str(tmp_path / "bench"))
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [r["recipe"].split()[0] for r in results["rows"]] == ["KD", "pretrain"]
    assert all(0.0 <= v <= 1.0 for row in results["rows"] for v in row["mAP"])
