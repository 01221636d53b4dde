"""``predict --plot`` and ``evaluate --plot``: the images open, have the expected size, and their
axes hold what they should (a spectrogram, tag scores, AP bars, precision-recall curves)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from helpers import cli
from PIL import Image

from dass_distill.data.manifest import load_manifest
from dass_distill.plots import MAX_COLUMNS, plot_evaluation, plot_prediction, precision_recall, spectrogram


def _open(path, size):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # something drawn, not a blank canvas
    return pixels


def test_spectrogram_of_a_long_file_is_bounded(tmp_path):
    rate = 16000
    wave = np.random.default_rng(0).standard_normal(rate * 95).astype(np.float32) * 0.1
    wave[rate * 40: rate * 41] *= 20  # a loud second at 40 s
    sf.write(tmp_path / "long.wav", wave, rate)
    spec, duration = spectrogram(tmp_path / "long.wav", rate, max_columns=500)
    assert duration == pytest.approx(95.0) and spec.shape[0] == 128 and 250 <= spec.shape[1] <= 500
    loud = int(spec.mean(0).argmax())
    assert abs(loud / spec.shape[1] * duration - 40.5) < 1.0  # the loud second is where it was
    assert spectrogram(tmp_path / "long.wav", rate)[0].shape[1] <= MAX_COLUMNS


def test_precision_recall_by_hand():
    precision, recall = precision_recall(np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 0, 1]))
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0])


def test_plot_prediction_clip_and_timeline(tmp_path, student_dir, synth_data):
    from dass_distill.data.audio import read_audio
    from dass_distill.inference import load_tagger
    from dass_distill.timeline import tag_timeline

    tagger = load_tagger(student_dir)
    clips = load_manifest(synth_data["train_manifest"]).clips
    scores = tagger.scores(read_audio(clips[0].path, 16000))
    fig = plot_prediction(tmp_path / "clip.png", clips[0].path, tagger.label_names, scores, top_k=3)
    _open(tmp_path / "clip.png", (1000, 600))
    spec_ax, tags_ax = fig.axes
    assert spec_ax.images and spec_ax.images[0].get_array().shape[0] == 128
    assert len(tags_ax.patches) == 3  # one bar per top tag, the best first
    best = tagger.label_names[int(scores.argmax())]
    assert tags_ax.get_yticklabels()[0].get_text() == best

    wave = np.concatenate([sf.read(c.path)[0] for c in clips[:8]])
    sf.write(tmp_path / "long.wav", wave, 16000)
    tl = tag_timeline(tagger, tmp_path / "long.wav", window_s=3.0, hop_s=1.5, progress=False)
    assert len(tl) > 4
    fig = plot_prediction(tmp_path / "timeline.png", tmp_path / "long.wav", tagger.label_names, tl.clip_scores, tl)
    _open(tmp_path / "timeline.png", (1000, 600))
    heat = fig.axes[1].images[0].get_array()
    assert heat.shape == (5, len(tl))  # top-5 tags x windows
    top = tl.clip_scores.topk(5).indices
    np.testing.assert_allclose(heat, tl.scores[:, top].T.numpy())


def test_plot_evaluation(tmp_path):
    from dass_distill.evaluation import per_class_records
    from dass_distill.metrics import tagging_metrics

    rng = np.random.default_rng(0)
    targets = (rng.random((40, 6)) < 0.3).astype(np.float32)
    scores = np.clip(targets * np.linspace(0.9, 0.0, 6) + rng.random((40, 6)) * 0.5, 0, 1)
    records = per_class_records([f"m{i}" for i in range(6)], [f"class {i}" for i in range(6)],
                                tagging_metrics(scores, targets))
    fig = plot_evaluation(tmp_path / "eval.png", records, scores, targets, curves=2)
    _open(tmp_path / "eval.png", (1200, 400))
    ap_ax, pr_ax = fig.axes
    assert [round(p.get_width(), 6) for p in ap_ax.patches] == sorted((round(r["ap"], 6) for r in records),
                                                                     reverse=True)
    assert len(pr_ax.get_lines()) == 4  # two best, two worst
    assert "class 0" in pr_ax.get_legend().get_texts()[0].get_text()  # the easiest class is the best
    with pytest.raises(ValueError, match="no class has a positive clip"):
        plot_evaluation(tmp_path / "none.png", [{"index": 0, "label": "x", "positives": 0, "ap": float("nan")}],
                        np.zeros((3, 1)), np.zeros((3, 1)))


def test_predict_and_evaluate_write_plots(tmp_path, student_dir, synth_data):
    clips = load_manifest(synth_data["eval_manifest"]).clips
    cli("predict", student_dir, clips[0].path, clips[1].path, "--plot", tmp_path / "tags.png")
    for clip in clips[:2]:
        _open(tmp_path / f"tags_{clip.path.stem}.png", (1000, 600))
    proc = cli("evaluate", student_dir, "--data", synth_data["eval_manifest"], "--plot", tmp_path / "eval.png")
    assert "plot written" in proc.stderr
    with Image.open(tmp_path / "eval.png") as image:
        assert image.size[0] == 1200 and image.size[1] >= 400
