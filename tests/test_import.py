"""``dass-distill import``: released student checkpoints (random weights in the originals' layouts)
-> checked model folders that tag audio exactly as the checkpoint does."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli
from mamba_reference import aum_checkpoint, ssamba_checkpoint

from dass_distill.data.manifest import LabelMap, load_manifest
from dass_distill.errors import UserError
from dass_distill.importing import import_checkpoint
from dass_distill.inference import load_tagger
from dass_distill.students import create_model, load_weights


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "class_labels_indices.csv"
    LabelMap(tuple(f"/m/{i:02d}" for i in range(7)), tuple(f"class {i}" for i in range(7))).to_csv(path)
    return path


def _dass_checkpoint(path, num_classes: int = 7):
    """A DASS release: DataParallel around DASS(v=VSSM), every key ``module.v.``."""
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.1 for k, v in create_model("dass_tiny", num_classes=num_classes)
             .state_dict().items()}
    torch.save({f"module.v.{k}": v for k, v in state.items()}, path)
    return path


def _same_scores(folder, model, checkpoint, clip):
    """The folder's tagger and the checkpoint loaded directly give the same scores on a real clip."""
    tagger = load_tagger(folder)
    reference = load_weights(model, checkpoint).eval()
    from dass_distill.data.audio import read_audio

    wave = read_audio(clip, 16000)
    with torch.no_grad():
        expected = torch.sigmoid(reference(tagger.featurize(wave).unsqueeze(0)))[0]
    torch.testing.assert_close(tagger.scores(wave).reshape(-1), expected, rtol=1e-4, atol=1e-5)
    # The folder's own transformers code gives the same scores (pipelines on released models).
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    hf_model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
    hf_features = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = hf_model(**hf_features(wave.numpy(), sampling_rate=16000, return_tensors="pt")).logits
    torch.testing.assert_close(torch.sigmoid(logits)[0], expected, rtol=1e-4, atol=1e-5)


def test_import_dass_checkpoint_round_trip(tmp_path, labels, synth_data):
    ckpt = _dass_checkpoint(tmp_path / "dass_tiny.pth")
    report = import_checkpoint(ckpt, "dass_tiny", labels, tmp_path / "model", target_length=150, formats=["onnx"])
    assert report.max_abs_diff < 1e-4 and set(report.files) == {"hf", "transformers", "onnx"}
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["training"]["imported_from"].endswith("dass_tiny.pth") and len(config["id2label"]) == 7
    card = (tmp_path / "model" / "README.md").read_text()
    assert "imported from a released checkpoint" in card and config["training"]["checkpoint_sha256"] in card
    clip = load_manifest(synth_data["train_manifest"]).clips[0].path
    _same_scores(tmp_path / "model", create_model("dass_tiny", num_classes=7, target_length=150), ckpt, clip)
    tags = cli("predict", tmp_path / "model", clip).stderr
    assert "class" in tags


@pytest.mark.parametrize("family", ["aum", "ssamba"])
def test_import_audio_mamba_checkpoints(tmp_path, labels, synth_data, family):
    frames = 150
    if family == "aum":  # grid 8 x 8 at stride 16: positions resized to the 150-frame grid (8 x 9)
        state = aum_checkpoint(16, 2, "bi-bi", (8, 8), num_classes=7, prefix="module.")
        model = create_model("aum_tiny", num_classes=7, target_length=frames, embed_dim=16, depth=2)
    else:
        state = ssamba_checkpoint(16, 2, (12, 14), num_classes=7)  # module.v.*, module.mlp_head.*
        model = create_model("ssamba_tiny", num_classes=7, target_length=frames, embed_dim=16, depth=2)
    torch.save(state, tmp_path / "released.pth")
    # The registered names build the released widths; a small one is registered here by overrides.
    from dass_distill import importing

    monkey = pytest.MonkeyPatch()
    monkey.setattr(importing, "create_model", lambda name, **kw: create_model(name, embed_dim=16, depth=2, **kw))
    try:
        report = import_checkpoint(tmp_path / "released.pth", f"{family}_tiny", labels, tmp_path / "model",
                                   target_length=frames)
    finally:
        monkey.undo()
    assert report.max_abs_diff < 1e-4
    clip = load_manifest(synth_data["train_manifest"]).clips[0].path
    _same_scores(tmp_path / "model", model, tmp_path / "released.pth", clip)


def test_import_errors(tmp_path, labels):
    ckpt = _dass_checkpoint(tmp_path / "dass.pth", num_classes=5)
    with pytest.raises(UserError, match=r"classifier.head.weight' has shape \(5, 192\), the model needs \(7, 192\)"):
        import_checkpoint(ckpt, "dass_tiny", labels, tmp_path / "a")
    with pytest.raises(UserError, match="not found"):
        import_checkpoint(tmp_path / "missing.pth", "dass_tiny", labels, tmp_path / "b")
    with pytest.raises(UserError, match="released student checkpoints"):
        import_checkpoint(ckpt, "ast_tiny", labels, tmp_path / "c")
    assert not (tmp_path / "a").exists()
    proc = cli("import", ckpt, "--model", "dass_tiny", "--labels", labels, "--out", tmp_path / "d", check=False)
    assert proc.returncode == 2 and "classifier.head.weight" in proc.stderr
