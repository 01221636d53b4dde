"""Manifests, audio I/O, datasets, augmentation and the synthetic demo dataset."""
