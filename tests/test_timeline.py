"""Window-by-window tagging of long recordings: placement, equivalence with a full load,
batching, bounded reads, errors, and the ``predict`` command's timeline output.

Most tests use a random-weight ``dass_tiny``: they check what the streaming does to the
audio and the scores. A small detector trained in the test on synthetic events checks
that tags land in the segments where the events are.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from dass_distill.data.audio import read_audio
from dass_distill.errors import UserError
from dass_distill.frontend import window_starts
from dass_distill.timeline import RESAMPLE_MARGIN_S, WindowReader, tag_timeline

SR = 16000
LABELS = [f"/m/test{i}" for i in range(12)]
NAMES = [f"class {i}" for i in range(12)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported random-weight dass_tiny folder (what ``load_tagger`` and ``predict`` read)."""
    from dass_distill.frontend import KaldiFbank
    from dass_distill.students import create_model, save_pretrained

    torch.manual_seed(0)
    model = create_model("dass_tiny", num_classes=len(LABELS)).eval()
    return save_pretrained(model, tmp_path_factory.mktemp("model"), KaldiFbank(), LABELS, NAMES)


@pytest.fixture(scope="module")
def tagger(model_dir):
    from dass_distill.inference import load_tagger

    return load_tagger(model_dir)


def _write(path, seconds: float, rate: int = SR, channels: int = 1, seed: int = 0, subtype: str = "PCM_16"):
    """Noise plus a tone whose pitch changes every second, so every window sees different audio."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * np.floor(t)) * t)
    x = tone[:, None] + 0.05 * rng.standard_normal((n, channels))
    sf.write(str(path), x.astype(np.float32), rate, subtype=subtype)
    return path


# --------------------------------------------------------------------------- placement
def test_window_placement_covers_the_file(tmp_path):
    assert window_starts(23 * SR, 10 * SR, 5 * SR) == [0, 5 * SR, 10 * SR, 13 * SR]
    with WindowReader(_write(tmp_path / "a.wav", 23.0), SR, 10.0, 5.0) as reader:
        starts = [s / SR for s in reader.starts]
        ends = [s + reader.window / SR for s in starts]
    assert starts == [0.0, 5.0, 10.0, 13.0] and ends == [10.0, 15.0, 20.0, 23.0]
    # no gap between consecutive windows, last one ends at the file's end
    assert all(nxt <= end for nxt, end in zip(starts[1:], ends))
    with WindowReader(_write(tmp_path / "b.wav", 4.0), SR, 10.0, 5.0) as reader:
        assert reader.starts == [0] and reader.window == 4 * SR and len(reader.read(0)) == 4 * SR


def test_short_file_equals_full_clip_scores(tmp_path, tagger):
    path = _write(tmp_path / "short.wav", 4.0)
    tl = tag_timeline(tagger, path, progress=False)
    full = tagger.scores(read_audio(path, SR))
    assert tl.scores.shape == (1, len(LABELS)) and tl.starts.tolist() == [0.0] and tl.ends.tolist() == [4.0]
    torch.testing.assert_close(tl.scores[0], full, atol=1e-6, rtol=0)
    torch.testing.assert_close(tl.clip_scores, full, atol=1e-6, rtol=0)


# 16 kHz mono: the same samples as a full load, only batching may round differently.
# 44.1 kHz stereo: each window is resampled from a chunk with a 50 ms margin; the sinc
# kernel spans < 1 ms, so the samples equal a whole-file resample up to float rounding
# of the convolution (measured 0); 1e-5 on the scores leaves room for that rounding.
@pytest.mark.parametrize("rate, channels, atol", [(16000, 1, 1e-6), (44100, 2, 1e-5)])
def test_streaming_equals_segments_of_the_full_waveform(tmp_path, tagger, rate, channels, atol):
    path = _write(tmp_path / f"long_{rate}.wav", 23.0, rate, channels, subtype="FLOAT")
    full = read_audio(path, SR)
    tl = tag_timeline(tagger, path, 10.0, 5.0, progress=False)
    assert tl.starts.tolist() == [0.0, 5.0, 10.0, 13.0] and tl.ends[-1] == len(full) / SR
    with WindowReader(path, SR, 10.0, 5.0) as reader:
        for i, start in enumerate(reader.starts):
            torch.testing.assert_close(reader.read(i), full[start : start + 10 * SR], atol=atol, rtol=0)
    for i, start in enumerate(tl.starts):
        s = int(round(start * SR))
        torch.testing.assert_close(tl.scores[i], tagger.scores(full[s : s + 10 * SR]), atol=atol, rtol=0)
    torch.testing.assert_close(tl.clip_scores, tl.scores.max(dim=0).values)


def test_batching_does_not_change_results(tmp_path, tagger):
    path = _write(tmp_path / "a.wav", 33.0)  # 6 windows: batch 4 leaves a short last batch
    one = tag_timeline(tagger, path, batch_size=1, progress=False).scores
    for batch_size in (4, 8):
        torch.testing.assert_close(tag_timeline(tagger, path, batch_size=batch_size, progress=False).scores,
                                   one, atol=1e-6, rtol=0)
    assert one.shape == (6, len(LABELS))


def test_segments_line_up_with_known_event_positions(tmp_path):
    """Structure only: window times match where events sit in the audio, not what a model finds."""
    from dass_distill.data.synth import render_long_recording

    wave, events = render_long_recording(np.random.default_rng(5), 62.0, events_per_minute=15)
    path = tmp_path / "long.wav"
    sf.write(str(path), wave, SR, subtype="FLOAT")
    with WindowReader(path, SR, 10.0, 5.0) as reader:
        starts = np.asarray(reader.starts) / SR
        ends = starts + reader.window / SR
        assert len(events) == 16 and ends[-1] == 62.0  # round(62 / 60 * 15)
        for ev in events:
            covering = np.flatnonzero((starts <= ev.onset_s) & (ev.onset_s < ends))
            # 10 s windows every 5 s: an onset is in two windows, one in the first/last 5 s
            # (the last window starts at 52 s, so 52-55 s is in three)
            expected = 1 if ev.onset_s < 5 or ev.onset_s >= 60 else 3 if 52 <= ev.onset_s < 55 else 2
            assert len(covering) == expected, (ev, covering)
            # an event up to window - hop = 5 s long lies whole inside one of them
            if ev.offset_s - ev.onset_s <= 5.0:
                assert any(starts[i] <= ev.onset_s and ev.offset_s <= ends[i] for i in covering), ev
            # the window's audio at the event is the recording's audio at the event's time
            i = int(covering[-1])  # the latest start leaves the most room after the onset
            on = round(ev.onset_s * SR)
            local = on - reader.starts[i]
            n = min(800, reader.window - local)
            np.testing.assert_array_equal(reader.read(i).numpy()[local : local + n], wave[on : on + n])


class _BandPool(torch.nn.Module):
    """A small trained detector: per-band mean and max over time -> linear. Fits in a second,
    so the timeline is tested with a model that really finds the events."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(256, num_classes)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([fbank.mean(1), fbank.amax(1)], -1))


EVENT_CLASSES = ["/synth/noise_high", "/synth/thump", "/synth/click_train"]


def _scene(rng, seconds: float, events: list[tuple[str, float]]) -> np.ndarray:
    """Quiet white noise with synthetic events (cut to 1.5 s) added at the given onsets."""
    from dass_distill.data.synth import render_event

    n = int(seconds * SR)
    mix = 0.01 * rng.standard_normal(n)
    for mid, onset in events:
        ev = render_event(rng, mid)[: int(1.5 * SR)] * 0.3 * 10 ** (rng.uniform(-6, 0) / 20)
        i = int(onset * SR)
        mix[i : i + len(ev)] += ev[: n - i]
    return mix.astype(np.float32)


@pytest.fixture(scope="module")
def trained_tagger():
    """The band-pool detector trained on 2 s clips holding one event of 3 classes, or none."""
    from dass_distill.inference import Tagger
    from dass_distill.frontend import KaldiFbank

    rng = np.random.default_rng(0)
    fe = KaldiFbank(target_length=200)
    feats, targets = [], []
    for i in range(120):
        mid = (EVENT_CLASSES + [None])[i % 4]
        feats.append(fe(torch.from_numpy(_scene(rng, 2.0, [(mid, rng.uniform(0, 0.5))] if mid else []))))
        targets.append([float(mid == c) for c in EVENT_CLASSES])
    x, y = torch.stack(feats), torch.tensor(targets)
    torch.manual_seed(0)
    model = _BandPool(len(EVENT_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    return Tagger(model.eval(), lambda w: fe(w, pad_to_target=False), fe, SR, EVENT_CLASSES, EVENT_CLASSES, "test")


@pytest.mark.parametrize("hop", [2.0, 1.0])
def test_trained_tagger_finds_events_in_their_segments(tmp_path, trained_tagger, hop):
    events = [("/synth/noise_high", 6.2), ("/synth/click_train", 24.2), ("/synth/thump", 44.2)]
    path = tmp_path / "scene.flac"
    sf.write(str(path), _scene(np.random.default_rng(1), 60.0, events), SR)  # events end by onset + 1.5 s
    tl = tag_timeline(trained_tagger, path, 2.0, hop, progress=False)
    assert len(tl) == (30 if hop == 2.0 else 59) and tl.ends[-1] == 60.0
    scores = tl.scores.numpy()
    for mid, onset in events:
        c = EVENT_CLASSES.index(mid)
        holding = np.flatnonzero((tl.starts <= onset) & (onset + 1.5 <= tl.ends))  # windows with the whole event
        touching = (tl.starts < onset + 1.5) & (onset < tl.ends)
        assert len(holding) == 1 and tl.starts[holding[0]] == {6.2: 6.0, 24.2: 24.0, 44.2: 44.0}[onset]
        assert scores[holding[0], c] > 0.5 and scores[holding[0]].argmax() == c, (mid, scores[holding[0]])
        # every window that does not touch this event says it is absent
        assert (scores[~touching, c] < 0.5).all(), (mid, tl.starts[~touching][scores[~touching, c] >= 0.5])
    assert [name for name, _ in tl.clip_top(3)] and (tl.clip_scores.numpy() > 0.5).all()


def test_reads_never_exceed_one_window_plus_margin(tmp_path, tagger, monkeypatch):
    requests: list[int] = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requests.append(frames)
        return real_read(self, frames, *args, **kwargs)

    def no_whole_file_read(*args, **kwargs):
        raise AssertionError("soundfile.read loads the whole file")

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    monkeypatch.setattr(sf, "read", no_whole_file_read)
    for rate, bound in ((16000, 10 * 16000), (44100, 10 * 44100 + 2 * 441 + 2 * int(np.ceil(RESAMPLE_MARGIN_S * 44100 / 441)) * 441)):
        requests.clear()
        path = _write(tmp_path / f"min_{rate}.wav", 60.0, rate, channels=2)
        tl = tag_timeline(tagger, path, 10.0, 5.0, batch_size=4, progress=False)
        assert len(tl) == 11 and len(requests) == 11
        assert 0 < max(requests) <= bound < 60 * rate / 5, (rate, max(requests))


# --------------------------------------------------------------------------- errors
def test_bad_audio_is_a_user_error_naming_the_file(tmp_path, tagger):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), SR)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    nan = tmp_path / "nan.wav"
    x = np.zeros(30 * SR, dtype=np.float32)
    x[25 * SR] = np.nan
    sf.write(str(nan), x, SR, subtype="FLOAT")
    cases = [(empty, "no samples"), (corrupt, "unreadable audio"), (tmp_path / "missing.wav", "not found"),
             (nan, "NaN or inf")]
    for path, problem in cases:
        with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + problem):
            tag_timeline(tagger, path, progress=False)
    with pytest.raises(UserError, match="hop must be positive"):
        tag_timeline(tagger, _write(tmp_path / "ok.wav", 2.0), hop_s=0, progress=False)


# --------------------------------------------------------------------------- CLI
def test_predict_writes_json_and_csv_timelines(tmp_path, model_dir):
    from helpers import cli

    long, short = _write(tmp_path / "long.wav", 23.0), _write(tmp_path / "short.wav", 2.0, seed=1)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")

    out = tmp_path / "pred.json"
    proc = cli("predict", model_dir, long, broken, short, "--top-k", 3, "--output", out, check=False)
    assert proc.returncode == 1 and "unreadable audio" in proc.stderr and "0:13.0" in proc.stderr
    doc = json.loads(out.read_text())
    timeline = doc[str(long)]
    assert [(s["start"], s["end"]) for s in timeline["segments"]] == [(0, 10), (5, 15), (10, 20), (13, 23)]
    assert all(len(s["tags"]) == 3 and all(0 <= t["score"] <= 1 for t in s["tags"]) for s in timeline["segments"])
    assert timeline["clip_aggregate"] == "max" and len(timeline["clip"]) == 3
    assert "error" in doc[str(broken)]
    assert [set(t) for t in doc[str(short)]] == [{"label", "score"}] * 3  # short clips keep the plain format

    out_csv = tmp_path / "pred.csv"
    cli("predict", model_dir, long, short, "--top-k", 2, "--timeline", "--output", out_csv)
    rows = list(csv.DictReader(out_csv.open()))
    by_file = {str(long): [], str(short): []}
    for row in rows:
        by_file[row["file"]].append(row)
    assert [(r["start_s"], r["rank"]) for r in by_file[str(long)]][:3] == [("0.000", "1"), ("0.000", "2"), ("5.000", "1")]
    assert len(by_file[str(long)]) == 4 * 2 and by_file[str(long)][-1]["end_s"] == "23.000"
    # --timeline on a clip shorter than the window: one segment, the whole clip
    assert [(r["start_s"], r["end_s"]) for r in by_file[str(short)]] == [("0.000", "2.000")] * 2
    assert all(r["label_id"] in LABELS and r["label"] in NAMES for r in rows)
