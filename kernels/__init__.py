"""Cross-scan / cross-merge and selective-scan kernels with torch references."""
