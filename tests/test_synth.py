"""The embedded synthetic dataset: determinism, layout, audio, class distinctness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dass_distill.data import synth
from dass_distill.data.audio import read_audio
from dass_distill.data.manifest import LabelMap, load_manifest
from dass_distill.data.synth import (
    SYNTH_CLASSES,
    make_synthetic_dataset,
    render_clip,
    render_long_recording,
    synth_label_map,
)
from dass_distill.errors import UserError

SR = 16000
MIDS = [m for m, _ in SYNTH_CLASSES]
NUM_CLASSES = len(MIDS)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(out: Path, **kw) -> dict:
    kw.setdefault("num_train", NUM_CLASSES + 2)
    kw.setdefault("num_eval", NUM_CLASSES)
    kw.setdefault("duration", 2.0)
    return make_synthetic_dataset(out, **kw)


# --- classes and label map -------------------------------------------------


def test_classes_and_label_map():
    assert 10 <= NUM_CLASSES <= 14
    assert len(set(MIDS)) == NUM_CLASSES
    assert all(m.startswith("/synth/") for m in MIDS)
    names = [n for _, n in SYNTH_CLASSES]
    assert len(set(names)) == NUM_CLASSES and all(names)
    lm = synth_label_map()
    assert lm.ids == tuple(MIDS) and lm.names == tuple(names)


# --- determinism -----------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path):
    _make(tmp_path / "a", seed=3)
    _make(tmp_path / "b", seed=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    wavs = [k for k in a if k.endswith(".wav")]
    assert len(wavs) == 2 * NUM_CLASSES + 2
    # every clip, train and eval alike, is its own draw
    assert len({a[k] for k in wavs}) == len(wavs)
    for name in a:
        assert a[name] == b[name], name


def test_different_seed_differs(tmp_path):
    _make(tmp_path / "a", seed=3)
    _make(tmp_path / "b", seed=4)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    wavs = [k for k in a if k.endswith(".wav")]
    assert all(a[k] != b[k] for k in wavs)


def test_clip_does_not_depend_on_clip_count(tmp_path):
    _make(tmp_path / "small", num_train=3, num_eval=2, seed=1)
    _make(tmp_path / "large", num_train=NUM_CLASSES + 2, num_eval=NUM_CLASSES, seed=1)
    small, large = _files(tmp_path / "small"), _files(tmp_path / "large")
    wavs = [k for k in small if k.endswith(".wav")]
    assert len(wavs) == 5
    for k in wavs:
        assert small[k] == large[k], k


def test_render_clip_deterministic_from_generator():
    a = render_clip(np.random.default_rng(7), 3.0)
    b = render_clip(np.random.default_rng(7), 3.0)
    np.testing.assert_array_equal(a.waveform, b.waveform)
    assert a.labels == b.labels and a.events == b.events


# --- layout, manifests, labels ----------------------------------------------


def test_layout_and_manifests(tmp_path):
    out = tmp_path / "synth"
    seen = []
    info = _make(out, progress=seen.append)
    assert seen == list(range(1, 2 * NUM_CLASSES + 3))
    assert info["num_train"] == NUM_CLASSES + 2 and info["num_eval"] == NUM_CLASSES
    assert info["num_classes"] == NUM_CLASSES
    assert info["label_map"] == out / "class_labels_indices.csv"
    assert LabelMap.from_csv(info["label_map"]) == synth_label_map()
    assert (out / "audio" / "train" / "train_00000.wav").is_file()
    assert (out / "audio" / "eval" / f"eval_{NUM_CLASSES - 1:05d}.wav").is_file()

    for key, split, count in (("train_manifest", "train", NUM_CLASSES + 2), ("eval_manifest", "eval", NUM_CLASSES)):
        path = info[key]
        assert path == out / f"{split}.json"
        # AST datafile with paths relative to the dataset root
        entries = json.loads(path.read_text())["data"]
        assert all(not Path(e["wav"]).is_absolute() and e["wav"].startswith(f"audio/{split}/") for e in entries)
        manifest = load_manifest(path)
        assert len(manifest) == count
        assert manifest.ids == [f"{split}_{i:05d}" for i in range(count)]
        for clip in manifest.clips:
            assert clip.path.is_file()
            assert 1 <= len(clip.labels) <= 3
            assert len(set(clip.labels)) == len(clip.labels)
        present = manifest.targets().sum(axis=0)
        assert (present > 0).all(), f"{split}: classes missing: {[MIDS[i] for i in np.flatnonzero(present == 0)]}"


def test_default_eval_size_label_counts():
    # the default eval split (100 clips, rendered short here for speed: labels don't
    # depend on duration): every class well represented, 1, 2 and 3 labels all occur
    labels = [
        render_clip(synth.clip_rng(0, "eval", i), 0.5, first_class=MIDS[i % NUM_CLASSES]).labels for i in range(100)
    ]
    counts = np.array([sum(m in clip for clip in labels) for m in MIDS])
    assert counts.min() >= 8, dict(zip(MIDS, counts))
    assert {len(clip) for clip in labels} == {1, 2, 3}


# --- audio -----------------------------------------------------------------


def test_audio_reads_back(tmp_path):
    info = _make(tmp_path / "s", duration=2.5)
    for clip in load_manifest(info["train_manifest"]).clips + load_manifest(info["eval_manifest"]).clips:
        meta = sf.info(str(clip.path))
        assert meta.samplerate == SR and meta.channels == 1 and meta.subtype == "PCM_16"
        assert meta.frames == int(2.5 * SR)
        wave = read_audio(clip.path, SR).numpy()
        assert wave.shape == (int(2.5 * SR),)
        peak = np.abs(wave).max()
        assert 0.2 < peak < 0.95, "clips are peak-normalised below full scale"
        # background noise: no stretch of digital silence anywhere
        frames = wave[: len(wave) // 400 * 400].reshape(-1, 400)
        assert (np.sqrt((frames**2).mean(axis=1)) > 1e-4).all()


def test_render_clip_events_match_labels():
    for i in range(40):
        r = render_clip(np.random.default_rng(i), 3.0)
        assert r.waveform.dtype == np.float32 and r.waveform.shape == (3 * SR,)
        assert np.isfinite(r.waveform).all() and np.abs(r.waveform).max() <= 0.9 + 1e-6
        assert 1 <= len(r.events) <= 3
        assert sorted({e.mid for e in r.events}, key=MIDS.index) == r.labels
        assert [e.onset_s for e in r.events] == sorted(e.onset_s for e in r.events)
        for e in r.events:
            assert 0.0 <= e.onset_s < e.offset_s <= 3.0


def test_render_clip_controls_and_short_clips():
    r = render_clip(np.random.default_rng(0), 0.25, num_events=3, first_class="/synth/siren")
    assert len(r.events) == 3 and "/synth/siren" in r.labels
    assert r.waveform.shape == (4000,)
    assert all(e.offset_s <= 0.25 for e in r.events)
    with pytest.raises(ValueError):
        render_clip(np.random.default_rng(0), 1.0, first_class="/synth/nope")
    with pytest.raises(ValueError):
        render_clip(np.random.default_rng(0), 1.0, num_events=0)


def test_long_recording_event_positions():
    wave, events = render_long_recording(np.random.default_rng(5), 120.0, 12, SR)
    assert wave.dtype == np.float32 and wave.shape == (120 * SR,)
    assert len(events) == 24
    assert [e.onset_s for e in events] == sorted(e.onset_s for e in events)
    assert all(0 <= e.onset_s < e.offset_s <= 120.0 for e in events)
    assert np.abs(wave).max() <= 0.9 + 1e-6
    # the reported positions are where the sound is: event spans are louder than the rest
    inside = np.zeros(len(wave), bool)
    for e in events:
        inside[int(e.onset_s * SR) : int(e.offset_s * SR)] = True
    assert 0.05 < inside.mean() < 0.8
    # 10 ms frame energies: sparse events (clicks, pulses) show in their loudest frames
    hop = SR // 100
    frame_power = (wave[: len(wave) // hop * hop].astype(np.float64) ** 2).reshape(-1, hop).mean(axis=1)
    frame_inside = inside[: len(frame_power) * hop].reshape(-1, hop).all(axis=1)
    background = np.median(frame_power[~inside[: len(frame_power) * hop].reshape(-1, hop).any(axis=1)])
    for e in events:
        span = frame_power[int(np.ceil(e.onset_s * 100)) : int(e.offset_s * 100)]
        assert span.max() > 4 * background, e
    assert np.median(frame_power[frame_inside]) > 4 * background
    again, events_again = render_long_recording(np.random.default_rng(5), 120.0, 12, SR)
    np.testing.assert_array_equal(wave, again)
    assert events == events_again


# --- the classes are distinct ----------------------------------------------


def _event_features(wave: np.ndarray, onset_s: float, offset_s: float) -> np.ndarray:
    """Pitch-invariant descriptors of one event: sweep, pitch wobble, tonality, envelope."""
    x = wave[int(onset_s * SR) : int(offset_s * SR)].astype(np.float64)
    nfft, hop = 1024, 128
    x = np.pad(x, (0, max(0, nfft - len(x))))
    frames = np.lib.stride_tricks.sliding_window_view(x, nfft)[::hop] * np.hanning(nfft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    freqs = np.fft.rfftfreq(nfft, 1 / SR)
    energy_db = 10 * np.log10(power.sum(axis=1))
    active = energy_db > energy_db.max() - 20
    p, t = power[active], np.flatnonzero(active) * hop / SR
    peak_bin = np.argmax(p[:, 3:], axis=1) + 3
    pitch = np.log2(freqs[peak_bin])
    slope, icpt = np.polyfit(t, pitch, 1) if len(t) > 1 else (0.0, pitch[0])
    wobble = np.std(pitch - (slope * t + icpt))
    centroid = np.log2((p * freqs).sum(axis=1) / p.sum(axis=1)).mean()
    flatness = np.mean(np.log(np.exp(np.log(p).mean(axis=1)) / p.mean(axis=1)))
    concentration = np.mean([row[max(0, j - 3) : j + 4].sum() / row.sum() for row, j in zip(p, peak_bin)])
    env_mod = np.std(energy_db[active])
    duty = active.mean()
    return np.array(
        [slope, np.log(wobble + 1e-3), centroid, flatness, concentration, np.log(env_mod + 0.1), duty]
    )


def _single_event_features(seed: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    feats, ys = [], []
    for c, mid in enumerate(MIDS):
        for i in range(per_class):
            r = render_clip(np.random.default_rng([seed, c, i]), 2.0, num_events=1, first_class=mid)
            (event,) = r.events
            feats.append(_event_features(r.waveform, event.onset_s, event.offset_s))
            ys.append(c)
    return np.array(feats), np.array(ys)


def _nearest_centroid_recalls() -> np.ndarray:
    """Per-class recall of a nearest-centroid classifier (within-class-scaled features)."""
    x_train, y_train = _single_event_features(1, 20)
    x_test, y_test = _single_event_features(2, 15)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in range(NUM_CLASSES)])
    spread = np.sqrt(np.mean([x_train[y_train == c].var(axis=0) for c in range(NUM_CLASSES)], axis=0)) + 1e-6
    dist = (((x_test[:, None, :] - centroids[None]) / spread) ** 2).sum(axis=-1)
    pred = dist.argmin(axis=1)
    return np.array([(pred[y_test == c] == c).mean() for c in range(NUM_CLASSES)])


def test_classes_are_distinct():
    recalls = _nearest_centroid_recalls()
    chance = 1 / NUM_CLASSES
    assert recalls.mean() > max(0.8, 8 * chance), dict(zip(MIDS, recalls.round(2)))
    # two classes that rendered alike would split their clips between them (recall ~0.5)
    assert recalls.min() >= 0.6, dict(zip(MIDS, recalls.round(2)))


def test_distinctness_check_catches_duplicate_class(monkeypatch):
    # control: make the vibrato class render plain tones; the check above must notice
    name, _ = synth._EVENTS["/synth/vibrato"]
    monkeypatch.setitem(synth._EVENTS, "/synth/vibrato", (name, synth._tone))
    recalls = _nearest_centroid_recalls()
    assert min(recalls[MIDS.index("/synth/vibrato")], recalls[MIDS.index("/synth/tone")]) < 0.6


# --- output folder handling --------------------------------------------------


def test_refuses_foreign_non_empty_dir(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        _make(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_refuses_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        _make(target)


def test_empty_dir_is_fine(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    info = _make(out, num_train=2, num_eval=1)
    assert info["root"] == out and (out / "train.json").is_file()


def test_overwrites_previous_synth_output(tmp_path):
    out = tmp_path / "s"
    _make(out, num_train=NUM_CLASSES + 4, num_eval=NUM_CLASSES + 1, seed=0)
    info = _make(out, num_train=NUM_CLASSES, num_eval=NUM_CLASSES, seed=9)
    # stale clips from the larger first run are gone, and the manifests match the disk
    assert len(list((out / "audio" / "train").glob("*.wav"))) == NUM_CLASSES
    assert len(list((out / "audio" / "eval").glob("*.wav"))) == NUM_CLASSES
    assert len(load_manifest(info["train_manifest"])) == NUM_CLASSES
    _make(tmp_path / "fresh", num_train=NUM_CLASSES, num_eval=NUM_CLASSES, seed=9)
    fresh = _files(tmp_path / "fresh")
    assert _files(out) == fresh


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        _make(tmp_path / "a", num_train=0)
    with pytest.raises(UserError):
        _make(tmp_path / "b", duration=0.0)
    with pytest.raises(UserError):
        _make(tmp_path / "c", seed=-1)
