"""Models trained on the user's labels besides DASS: the SSLAM and HTS-AT teachers (more teacher
kinds for ensembles; HTS-AT for small label sets) and the plain CNN baseline of the recipe benchmarks."""

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


def test_htsat_teacher_trains_exports_and_caches(tmp_path, synth_data):
    """``train --model htsat_tiny`` -> export -> ``htsat:FOLDER`` as a cache teacher, on the
    filterbank it was trained on; ``predict`` reads the same folder."""
    from dass_distill.caching import build_cache
    from dass_distill.data.audio import read_audio
    from dass_distill.data.manifest import load_manifest
    from dass_distill.export import export_run
    from dass_distill.inference import load_tagger
    from dass_distill.logit_cache import LogitCacheReader
    from dass_distill.teachers import load_teacher
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train
    from helpers import base_overrides

    summary = train(load_config(None, base_overrides(synth_data, tmp_path / "htsat", model="htsat_tiny",
                                                     **{"optim.max_steps": 2})))
    assert summary["steps"] == 2 and summary["health"]["final_feature_spread"] > 0
    report = export_run(tmp_path / "htsat", tmp_path / "htsat_export")
    assert report.family == "htsat" and report.max_abs_diff == 0.0
    teacher = load_teacher(f"htsat:{tmp_path / 'htsat_export'}", name="htsat")
    manifest = load_manifest(synth_data["train_manifest"])
    assert teacher.kind == "htsat" and teacher.label_ids == list(manifest.label_map.ids)
    trained, *_ = load_trained_model(tmp_path / "htsat")
    wave = read_audio(manifest.clips[0].path, 16000)
    with torch.no_grad():
        torch.testing.assert_close(teacher.logits([wave])[0], trained.module(trained.featurize(wave)[None])[0])
    assert load_tagger(tmp_path / "htsat_export").kind == "htsat"
    build_cache([teacher], manifest, tmp_path / "cache.h5", num_workers=0, command="test")
    assert np.isfinite(LogitCacheReader(tmp_path / "cache.h5").get(manifest.ids, "htsat")).all()


def test_feature_spread_reads_a_convolutional_head_per_channel():
    """HTS-AT's head is a Conv2d: its inputs are (clips, channels, rows, time), channels first."""
    from dass_distill.training.health import FeatureSpread

    x = torch.randn(8, 4, 3, 5) * torch.tensor([0.1, 1.0, 3.0, 10.0])[:, None, None]
    conv, linear = torch.nn.Conv2d(4, 2, 1), torch.nn.Linear(4, 2)
    with FeatureSpread(conv) as channels_first, torch.no_grad():
        conv(x)
    with FeatureSpread(linear) as channels_last, torch.no_grad():
        linear(x.movedim(1, -1))
    assert channels_first.value == pytest.approx(channels_last.value)


def test_htsat_image_holds_the_target_length():
    """The image side grows by powers of two with the clip; HTS-AT stretches the frames to fill it."""
    from dass_distill.registry import create_model
    from dass_distill.teacher_models import htsat_spec_size

    for frames, side in ((64, 64), (100, 128), (256, 128), (257, 256), (1024, 256), (1025, 512)):
        assert htsat_spec_size(64, frames) == side, frames
    for frames in (100, 300):
        model = create_model("htsat_tiny", num_classes=3, target_length=frames).eval()
        cfg = model.config
        assert cfg.spec_size * cfg.freq_ratio >= frames and cfg.freq_ratio == cfg.spec_size // 64
        assert model(torch.randn(2, frames, 64)).shape == (2, 3)
    assert create_model("htsat_base", num_classes=527, target_length=1024).config.spec_size == 256  # the released
    with pytest.raises(UserError, match="htsat_tiny: spec_size 128 folds 256 frames, fewer than target_length 1024"):
        create_model("htsat_tiny", num_classes=3, target_length=1024, spec_size=128)


def test_htsat_initialisation_and_stochastic_depth_are_the_originals():
    """Swin's truncated-normal(0.02) init; stochastic depth rising to drop_path_rate, off in eval."""
    from dass_distill.registry import create_model

    model = create_model("htsat_tiny", num_classes=3, target_length=200, drop_path_rate=0.5).eval()
    qkv = model.layers[0].blocks[0].attn.qkv
    assert 0.017 < qkv.weight.std().item() < 0.023  # timm's trunc_normal_: cut at +-2, i.e. a plain normal
    assert not qkv.bias.any() and model.layers[0].blocks[0].attn.relative_position_bias_table.std() > 0.01
    assert isinstance(model.layers[0].blocks[0].drop_path, torch.nn.Identity)  # the first block: rate 0
    assert model.layers[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.5)
    x = torch.randn(2, 200, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_htsat_folder_errors_are_one_line(tmp_path, synth_data):
    from dass_distill.checkpoint_files import CheckpointError
    from dass_distill.teachers import load_teacher

    with pytest.raises(CheckpointError, match="has no config.json; pass an HTS-AT folder"):
        load_teacher(f"htsat:{tmp_path}")
    (tmp_path / "config.json").write_text('{"model_type": "dass"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="holds a 'dass' model, not an HTS-AT"):
        load_teacher(f"htsat:{tmp_path}")


def test_htsat_fine_tunes_from_a_released_checkpoint(tmp_path, synth_data):
    """``train --model htsat_tiny pretrained=HTSAT.ckpt``: the Swin weights of a random-weight
    checkpoint in the released Lightning layout, the window masks of the smaller image, a new
    head for other labels; the released head for its own class count."""
    from dass_distill.checkpoint_files import CheckpointError
    from dass_distill.registry import create_model, family_of
    from dass_distill.teachers.htsat import HTSATConfig, HTSATModel, save_htsat_checkpoint
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train
    from helpers import base_overrides

    torch.manual_seed(0)
    released = HTSATModel(HTSATConfig(embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8))).init_weights().eval()
    ckpt = save_htsat_checkpoint(released, tmp_path / "HTSAT_AudioSet_Saved_1.ckpt")
    theirs = released.state_dict()
    model = create_model("htsat_tiny", num_classes=5, target_length=200)   # a 128-wide image, not 256
    init = family_of(model).init_from_released
    assert init(model, ckpt, [f"c{i}" for i in range(5)]) is False
    mine = model.state_dict()
    swin = [k for k in mine if k.startswith(("patch_embed.", "layers.", "norm.")) and not k.endswith("attn_mask")]
    assert len(swin) > 50 and all(torch.equal(mine[k], theirs[k]) for k in swin)
    assert mine["layers.0.blocks.1.attn_mask"].shape[0] == 16 < theirs["layers.0.blocks.1.attn_mask"].shape[0]
    assert not torch.equal(mine["tscam_conv.bias"][:5], theirs["tscam_conv.bias"][:5])

    same = create_model("htsat_tiny", num_classes=527, target_length=1024).eval()  # the released geometry
    assert init(same, ckpt, [f"c{i}" for i in range(527)]) is True
    img = torch.randn(2, 1, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(same.forward_image(img), released.forward_image(img))
    with pytest.raises(CheckpointError, match="fine-tune the checkpoint's own size"):
        init(create_model("htsat_base", num_classes=5, target_length=200), ckpt, [f"c{i}" for i in range(5)])

    train(load_config(None, base_overrides(synth_data, tmp_path / "run", model="htsat_tiny", pretrained=str(ckpt),
                                           **{"optim.max_steps": 1})))
    trained, *_ = load_trained_model(tmp_path / "run")
    assert trained.module.patch_embed.proj.weight.sub(theirs["patch_embed.proj.weight"]).abs().max() < 0.01
