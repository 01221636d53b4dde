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
