"""Shared fixtures: a small synthetic dataset made once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("DASS_DISTILL_NO_PROGRESS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """24 train / 12 eval clips of 1.5 s, 12 classes."""
    from dass_distill.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_train=24, num_eval=12, duration=1.5, seed=3)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A random-weight dass_tiny folder labelled with the synthetic classes."""
    import torch

    from dass_distill.data.synth import synth_label_map
    from dass_distill.frontend import KaldiFbank
    from dass_distill.students import create_model, save_pretrained

    lm = synth_label_map()
    torch.manual_seed(0)
    model = create_model("dass_tiny", num_classes=len(lm)).eval()
    folder = tmp_path_factory.mktemp("student")
    return save_pretrained(model, folder, KaldiFbank(target_length=150), list(lm.ids), list(lm.names))
