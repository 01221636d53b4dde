"""Cross-scan / cross-merge and selective-scan kernels with torch references."""

from .cross_scan import cross_merge, cross_scan
from .linear_scan import linear_scan
from .selective_scan import selective_scan, selective_scan_cpu, selective_scan_ref

__all__ = [
    "cross_merge",
    "cross_scan",
    "linear_scan",
    "selective_scan",
    "selective_scan_cpu",
    "selective_scan_ref",
]
