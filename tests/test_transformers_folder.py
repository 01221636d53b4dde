"""Exported student folders load in transformers with ``trust_remote_code=True``: the folder's
own code (torch only) gives the toolkit's features and logits for every student family, and the
real ``audio-classification`` pipeline tags wav files with the scores ``dass-distill predict`` prints."""

from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import cli
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

from dass_distill.frontend import KaldiFbank, window_starts
from dass_distill.students import create_model, save_pretrained
from dass_distill.students import transformers_code

FAMILIES = {
    "dass": ("dass_tiny", {}),
    "aum bi-bi": ("aum_tiny", {"depth": 2}),
    "aum fo-bi": ("aum_tiny", {"depth": 2, "variant": "fo-bi"}),
    "ssamba avgtok stride 10": ("ssamba_tiny", {"depth": 2, "fstride": 10, "tstride": 10}),
    "ssamba cls": ("ssamba_tiny", {"depth": 2, "head": "cls"}),
    "cnn": ("cnn_baseline", {}),
}
TARGET = 150


def _folder(path, name, overrides, num_classes=6):
    """A model with weights moved off their initial values (so the recurrences' constants matter), saved."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, target_length=TARGET, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    labels = [f"sound {i}" for i in range(num_classes)]
    save_pretrained(model, path, KaldiFbank(target_length=TARGET), [f"/m/{i}" for i in range(num_classes)], labels)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_folder_loads_in_transformers_with_the_same_logits(tmp_path, family):
    name, overrides = FAMILIES[family]
    model = _folder(tmp_path, name, overrides)
    hf = AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(hf).__name__ == transformers_code.CLASSES[json.loads((tmp_path / "config.json").read_text())
                                                          ["model_type"]][1]
    assert hf.config.problem_type == "multi_label_classification"
    assert hf.config.id2label[5] == "sound 5" and hf.config.num_labels == 6
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for frames in (TARGET, TARGET * 5 // 2 + 1):  # the training grid and another length
            x = torch.randn(2, frames, 128, generator=g)
            torch.testing.assert_close(hf(input_values=x).logits, model(x), rtol=1e-5, atol=1e-5)
        # (batch, windows, frames, bins): the max over each clip's windows
        x = torch.randn(2, 3, TARGET, 128, generator=g)
        expected = model(x.flatten(0, 1)).view(2, 3, -1).amax(1)
        torch.testing.assert_close(hf(input_values=x).logits, expected, rtol=1e-5, atol=1e-5)
        labels = torch.zeros(2, 6)
        labels[0, 1] = 1
        out = hf(input_values=x, labels=labels)
        torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(expected, labels),
                                   rtol=1e-5, atol=1e-6)


def test_remote_code_builds_from_a_config_and_trains(tmp_path):
    """A model built from the folder's config (no weights) runs forward and backward."""
    _folder(tmp_path, "aum_tiny", {"depth": 2})
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    hf = AutoModelForAudioClassification.from_config(config, trust_remote_code=True).train()
    x = torch.randn(2, TARGET, 128)
    out = hf(input_values=x, labels=torch.ones(2, 6))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in hf.parameters() if p.requires_grad)


def test_feature_extractor_is_the_toolkit_front_end(tmp_path):
    _folder(tmp_path, "dass_tiny", {})
    fe = KaldiFbank(target_length=TARGET)
    hf = AutoFeatureExtractor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(hf).__name__ == transformers_code.FEATURE_EXTRACTOR_CLASS and hf.sampling_rate == 16000
    g = torch.Generator().manual_seed(2)
    for samples in (300, 16000 * 3 // 2, 160000):  # shorter than one frame, padded to the target, one 10 s window
        wave = torch.randn(samples, generator=g) * 0.1 + 0.01
        values = torch.as_tensor(hf(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"])
        torch.testing.assert_close(values[0], fe.one(wave, pad_to_target=False), rtol=0, atol=1e-5)
    # Longer than 10 s: the windows predict's timeline scores, every 5 s, the last one ending at the end.
    wave = torch.randn(16000 * 23 + 77, generator=g) * 0.1
    values = torch.as_tensor(hf(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"])[0]
    starts = window_starts(len(wave), 160000, 80000)
    assert values.shape[0] == len(starts) == 4
    for v, s in zip(values, starts):
        torch.testing.assert_close(v, fe.one(wave[s:s + 160000], pad_to_target=False), rtol=0, atol=1e-5)
    # A batch: clips padded with silence's features; a windowed clip's last window repeated.
    batch = hf([wave.numpy(), wave[:16000].numpy()], sampling_rate=16000, return_tensors="pt")["input_values"]
    assert tuple(batch.shape) == (2, 4, values.shape[1], 128)
    as_list = hf(wave[:16000].tolist(), sampling_rate=16000, return_tensors="pt")["input_values"]  # one clip
    torch.testing.assert_close(torch.as_tensor(as_list)[0], fe.one(wave[:16000], pad_to_target=False), rtol=0,
                               atol=1e-5)
    with pytest.raises(ValueError, match="16000 Hz, got 8000 Hz"):
        hf(wave.numpy(), sampling_rate=8000)


@pytest.fixture
def ffmpeg_on_path(tmp_path, monkeypatch):
    """transformers' pipeline reads audio files with the ffmpeg program: the one imageio-ffmpeg ships."""
    import imageio_ffmpeg

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _write_clip(path, seconds, rate=16000):
    rng = np.random.default_rng(int(seconds * 10))
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 2 < 1) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def _predicted(folder, clips, out):
    """``dass-distill predict`` top-5 (label, score) of each clip: its tags, or a timeline's clip-level tags."""
    cli("predict", folder, *clips, "--top-k", "5", "--output", out)
    results = json.loads(out.read_text())
    return [[(t["label"], t["score"]) for t in (r["clip"] if isinstance(r, dict) else r)]
            for r in (results[str(c)] for c in clips)]


def _same_tags(got, expected):
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["dass", "aum bi-bi"])
def test_pipeline_tags_wav_files_as_predict_does(tmp_path, family, ffmpeg_on_path):
    name, overrides = FAMILIES[family]
    folder = tmp_path / "model"
    _folder(folder, name, overrides)
    # One clip, a recording predict tags as a timeline of 10 s windows, and a clip at another rate.
    clips = [_write_clip(tmp_path / "clip_3s.wav", 3), _write_clip(tmp_path / "clip_23s.wav", 23),
             _write_clip(tmp_path / "clip_22k.wav", 2.5, rate=22050)]
    expected = _predicted(folder, clips, tmp_path / "predict.json")
    classifier = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    for clip, tags in zip(clips[:2], expected):  # files, read by ffmpeg
        _same_tags([(t["label"], t["score"]) for t in classifier(str(clip), top_k=5)], tags)
    # Audio at another rate, given as an array: the pipeline resamples it as predict does the file.
    wave, rate = sf.read(clips[2], dtype="float32")
    got = classifier({"array": wave, "sampling_rate": rate}, top_k=5)
    _same_tags([(t["label"], t["score"]) for t in got], expected[2])


def test_remote_code_is_self_contained():
    """The folder's code imports torch, numpy, transformers, the standard library and its own files only."""
    allowed = {"torch", "numpy", "transformers", "math", "collections"}
    for name in transformers_code.CODE_FILES:
        tree = ast.parse((transformers_code.CODE_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # a sibling file, copied into the folder with it
                    assert f"{node.module}.py" in transformers_code.CODE_FILES, (name, node.module)
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots - allowed)


def test_folders_carry_the_code_and_auto_map(tmp_path):
    _folder(tmp_path, "ssamba_tiny", {"depth": 2})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForAudioClassification"] == \
        "modeling_dass_distill.SsambaForAudioClassification"
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["auto_map"]["AutoFeatureExtractor"].endswith(transformers_code.FEATURE_EXTRACTOR_CLASS)
    for name in transformers_code.CODE_FILES:
        assert (tmp_path / name).read_text() == (transformers_code.CODE_DIR / name).read_text()
    assert KaldiFbank.from_pretrained(tmp_path) == KaldiFbank(target_length=TARGET)  # the toolkit still reads it


def test_folder_saved_back_by_transformers_loads_in_the_toolkit(tmp_path):
    """Fine-tune with transformers, save_pretrained, and the toolkit still reads the folder."""
    from dass_distill.inference import load_tagger

    _folder(tmp_path / "src", "dass_tiny", {})
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "src", trust_remote_code=True)
    features = AutoFeatureExtractor.from_pretrained(tmp_path / "src", trust_remote_code=True)
    model.save_pretrained(tmp_path / "resaved")
    features.save_pretrained(tmp_path / "resaved")
    wave = torch.randn(24000, generator=torch.Generator().manual_seed(3)) * 0.1
    resaved, source = load_tagger(tmp_path / "resaved"), load_tagger(tmp_path / "src")
    torch.testing.assert_close(resaved.scores(wave), source.scores(wave))
