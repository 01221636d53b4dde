"""Cross-scan / cross-merge and selective-scan kernels with torch references.

``CrossScanTriton`` / ``CrossMergeTriton`` (the Triton autograd Functions) are loaded on
first access, so importing this package never imports Triton. Their functional entry
points live in the submodule, ``from dass_distill.kernels.cross_scan_triton import
cross_scan_triton, cross_merge_triton``: a package-level ``cross_scan_triton`` would be
the function or the submodule depending on import order (importing a submodule rebinds
the package attribute of that name).
"""

from __future__ import annotations

import importlib
from typing import Any

from .causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_torch
from .cross_scan import cross_merge, cross_merge_ref, cross_scan, cross_scan_ref
from .linear_scan import linear_scan
from .selective_scan import (
    selective_scan,
    selective_scan_cpu,
    selective_scan_fused_cpu,
    selective_scan_ref,
    selective_scan_torch,
)

_LAZY_TRITON = ("CrossMergeTriton", "CrossScanTriton")

# The lazy Triton names stay out of __all__: a star import must not import Triton.
__all__ = [
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_torch",
    "cross_merge",
    "cross_merge_ref",
    "cross_scan",
    "cross_scan_ref",
    "linear_scan",
    "selective_scan",
    "selective_scan_cpu",
    "selective_scan_fused_cpu",
    "selective_scan_ref",
    "selective_scan_torch",
]


def __getattr__(name: str) -> Any:
    # PEP 562: Triton is imported only when one of its names is asked for.
    if name in _LAZY_TRITON:
        return getattr(importlib.import_module(".cross_scan_triton", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
