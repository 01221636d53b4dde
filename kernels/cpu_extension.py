"""Build (once per machine) and load the fused CPU selective-scan kernel.

The kernel (``csrc/selective_scan_cpu.cpp``) is a PyTorch C++ extension compiled on
first use with ``torch.utils.cpp_extension.load``, the way DeepSpeed builds its CPU ops:
it needs the C++ compiler and Python headers a fresh machine has, and nothing from a
registry beyond torch and ninja. The build is cached per extension name, torch and
Python version, and guarded by torch's file lock, so parallel workers build it once.

If the build fails (no compiler, say), a warning names the reason and callers use the
pure-torch path, which is exact too, only slower. ``DASS_DISTILL_CPU_KERNEL=torch``
turns the fused kernel off.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["ENV_VAR", "cpu_kernel", "cpu_kernel_enabled"]

ENV_VAR = "DASS_DISTILL_CPU_KERNEL"
_SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
_NAME = "dass_selective_scan_cpu"


def cpu_kernel_enabled() -> bool:
    """False when ``DASS_DISTILL_CPU_KERNEL`` is ``torch`` (or ``0``/``off``)."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("torch", "0", "off", "false")


def _isa_flags() -> tuple[str, list[str]]:
    """Vector ISA flags the machine supports, and a suffix that keeps builds apart.

    Not ``-march=native``: a shared home directory may serve several CPU models, and the
    suffix makes each get a build it can run.
    """
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            flags = set()
        if {"avx2", "fma"} <= flags:
            return "avx2", ["-mavx2", "-mfma"]
    return "base", []


def _build_directory(name: str) -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__.split('+')[0]}"
    path = root / f"{name}_{tag}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def cpu_kernel() -> ModuleType | None:
    """The compiled extension (``fwd``/``bwd``), or ``None`` if disabled or unbuildable."""
    if not cpu_kernel_enabled():
        return None
    isa, flags = _isa_flags()
    name = f"{_NAME}_{isa}"
    try:
        # Importing cpp_extension logs a CUDA_HOME warning on CPU-only machines; irrelevant here.
        cpp_log = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_log.level
        cpp_log.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load
        finally:
            cpp_log.setLevel(level)

        build_dir = _build_directory(name)
        if not any(build_dir.glob(f"{name}*.so")):
            print(
                f"dass-distill: compiling the fused CPU selective-scan kernel into {build_dir} "
                "(first use on this machine, about a minute)",
                file=sys.stderr,
            )
        return load(
            name=name,
            sources=[str(_SOURCE)],
            # -fno-trapping-math lets GCC vectorise the clamps and selects of the exp/log1p
            # polynomials (it otherwise keeps them scalar in case of FP traps). Not
            # -ffast-math: the exp's round-to-nearest trick needs strict associativity.
            extra_cflags=["-O3", "-fno-trapping-math", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as exc:  # any build or load failure: fall back, never crash a forward
        warnings.warn(
            f"the fused CPU selective-scan kernel could not be built ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}); using the "
            f"pure-torch path (exact, slower). Set {ENV_VAR}=torch to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
