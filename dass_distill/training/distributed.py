"""Process-group set-up for DeepSpeed: single CPU process, local GPUs, or the launcher."""

from __future__ import annotations

import os
import socket
import sys

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_accelerator_env() -> None:
    """Tell DeepSpeed which accelerator to use, so it neither probes nor warns."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def ensure_process_env() -> None:
    """Fill the rendezvous variables a lone process lacks, so DeepSpeed does not try MPI discovery."""
    ensure_accelerator_env()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init_distributed() -> None:
    """Initialise torch.distributed once (gloo on CPU, nccl on GPU)."""
    ensure_process_env()
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def launched_by_launcher() -> bool:
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def relaunch_with_deepspeed(argv: list[str], num_gpus: int, hostfile: str | None = None) -> int:
    """Re-run this CLI command under the ``deepspeed`` launcher: ``num_gpus`` processes here
    (one per GPU; on CPU, gloo processes), or every host of ``hostfile`` (DeepSpeed's own
    multi-node launch over pdsh/ssh)."""
    # The launcher's module, run by this interpreter: works whether or not the venv's bin/ is on PATH.
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    else:
        cmd += ["--num_gpus", str(num_gpus)]
    cmd += ["--no_local_rank", "--module", "dass_distill.cli", *argv]
    os.execv(sys.executable, cmd)  # replaces this process; the launcher reports the exit status
    return 0  # unreachable


def relaunch_with_torchrun(argv: list[str], nproc: int) -> None:
    """Re-run this CLI command under torchrun with ``nproc`` local processes (gloo/nccl rendezvous)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "dass_distill.cli", *argv]
    os.execv(sys.executable, cmd)  # replaces this process; torchrun reports the exit status
