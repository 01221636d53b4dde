"""Helpers shared by the tests: running the command line in a subprocess, and training overrides
for tiny runs. (Random-weight teacher checkpoints in their release formats: teacher_checkpoints.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env() -> dict:
    """This process's environment without the rendezvous variables an in-process training run set
    (a child would otherwise join that process group's port)."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def cli(*args, cwd=None, check=True):
    """``dass-distill ARGS`` in a fresh process (CPU DeepSpeed, no progress bars, wide lines)."""
    env = {**clean_env(), "DS_ACCELERATOR": "cpu", "DASS_DISTILL_NO_PROGRESS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "dass_distill.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dass-distill {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def base_overrides(synth_data, out: Path, **extra) -> list[str]:
    """``key=value`` overrides for a tiny ``dass_tiny`` run on the session's synthetic data."""
    items = {
        "model": "dass_tiny",
        "data.train": synth_data["train_manifest"],
        "data.eval": synth_data["eval_manifest"],
        "data.target_length": 150,
        "data.num_workers": 0,
        "data.memoize_features": True,
        "optim.batch_size": 4,
        "optim.lr": 1e-3,
        "optim.warmup_steps": 2,
        "optim.epochs": 1,
        "augment.time_mask": 20,
        "output_dir": str(out),
        "log_every": 1,
        **extra,
    }
    return [f"{k}={v}" for k, v in items.items()]


def latest_weights(run: Path) -> dict:
    """The consolidated state dict of a training run's latest checkpoint."""
    from dass_distill.training.checkpoint import consolidated_state_dict

    tag = (run / "checkpoints" / "latest").read_text().strip()
    return consolidated_state_dict(run / "checkpoints", tag)


def kill_after_checkpoint(command: list[str], run: Path, env: dict, tag: str = "step_0000007",
                          timeout: float = 600) -> subprocess.Popen:
    """Start ``command``, SIGKILL it once ``run``'s latest checkpoint reaches ``tag`` (or it ends),
    and return the finished process (its ``returncode`` is ``-SIGKILL`` when the kill came first)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest, deadline = run / "checkpoints" / "latest", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= tag:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc
