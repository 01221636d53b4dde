"""Models trained on the user's labels besides DASS: an SSLAM teacher (a second teacher kind for
ensembles) and the plain CNN baseline of the recipe benchmarks."""

import numpy as np
import pytest
import torch

from dass_distill.errors import UserError
from dass_distill.training.config import load_config


def test_sslam_teacher_trains_exports_and_caches_beside_an_ast(tmp_path, synth_data):
    from dass_distill.caching import build_cache
    from dass_distill.data.audio import read_audio
    from dass_distill.data.manifest import load_manifest
    from dass_distill.export import export_run
    from dass_distill.logit_cache import LogitCacheReader
    from dass_distill.teachers import load_teacher
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train
    from helpers import base_overrides

    summary = train(load_config(None, base_overrides(synth_data, tmp_path / "sslam", model="sslam_tiny",
                                                     **{"optim.max_steps": 2})))
    assert summary["steps"] == 2
    report = export_run(tmp_path / "sslam", tmp_path / "sslam_export")
    assert report.family == "sslam" and report.max_abs_diff == 0.0
    teacher = load_teacher(f"sslam:{tmp_path / 'sslam_export'}", name="sslam")
    trained, *_ = load_trained_model(tmp_path / "sslam")
    manifest = load_manifest(synth_data["train_manifest"])
    wave = read_audio(manifest.clips[0].path, 16000)
    with torch.no_grad():  # the teacher's own front end gives the training features
        torch.testing.assert_close(teacher.logits([wave])[0], trained.module(trained.featurize(wave)[None])[0])
    ensemble = load_teacher({"kind": "ensemble", "name": "ast_sslam", "members": [
        f"ast:{_ast_folder(tmp_path, synth_data)}", f"sslam:{tmp_path / 'sslam_export'}"]})
    build_cache([ensemble], manifest, tmp_path / "cache.h5", num_workers=0, command="test")
    reader = LogitCacheReader(tmp_path / "cache.h5")
    assert sorted(reader.teachers) == ["ast", "sslam"]
    assert np.isfinite(reader.get(manifest.ids, "sslam")).all()


def _ast_folder(tmp_path, synth_data):
    from dass_distill.export import export_run
    from dass_distill.training.loop import train
    from helpers import base_overrides

    train(load_config(None, base_overrides(synth_data, tmp_path / "ast", model="ast_tiny", **{"optim.max_steps": 1})))
    export_run(tmp_path / "ast", tmp_path / "ast_export")
    return tmp_path / "ast_export"


def test_cnn_baseline_trains_and_exports_like_a_student(tmp_path, synth_data):
    from dass_distill.export import export_run
    from dass_distill.inference import load_tagger
    from dass_distill.training.loop import train
    from helpers import base_overrides

    summary = train(load_config(None, base_overrides(synth_data, tmp_path / "cnn", model="cnn_baseline",
                                                     **{"optim.max_steps": 2})))
    assert summary["steps"] == 2 and summary["best_mAP"] > 0
    report = export_run(tmp_path / "cnn", tmp_path / "out")
    assert report.family == "cnn" and report.max_abs_diff == 0.0
    assert load_tagger(tmp_path / "out").kind == "cnn"
    with pytest.raises(UserError, match="ONNX / pt2 export is not available for cnn models"):
        export_run(tmp_path / "cnn", tmp_path / "out2", formats=["onnx"])


def test_unknown_options_of_new_models_are_one_line():
    from dass_distill.data.synth import synth_label_map
    from dass_distill.models import build_model

    with pytest.raises(UserError, match="ast_tiny has no option 'bogus_option'; valid options: .*frequency_stride"):
        build_model("ast_tiny", synth_label_map(), 200, bogus_option=3)  # was stored silently in the config
    with pytest.raises(UserError, match="cnn_baseline has no option 'width'"):
        build_model("cnn_baseline", synth_label_map(), 200, width=3)
    with pytest.raises(UserError, match="sslam_tiny has no option 'bogus'"):
        build_model("sslam_tiny", synth_label_map(), 200, bogus=1)
    with pytest.raises(UserError, match="sslam_tiny: SSLAM config"):
        build_model("sslam_tiny", synth_label_map(), 8)  # shorter than one patch
