import json

import numpy as np
import pytest
import soundfile as sf
import torch

from dass_distill.data.audio import AudioError, read_audio
from dass_distill.data.manifest import LabelMap, load_manifest
from dass_distill.errors import UserError


@pytest.fixture
def label_map(tmp_path):
    lm = LabelMap(("/m/a", "/m/b", "/m/c"), ("Alpha", "Beta", "Gamma"))
    lm.to_csv(tmp_path / "class_labels_indices.csv")
    return lm


def write_wav(path, seconds=0.5, sr=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((int(seconds * sr), channels)) * 0.1).astype(np.float32)
    sf.write(path, data, sr)
    return data


def test_label_map_csv_round_trip(tmp_path, label_map):
    back = LabelMap.from_csv(tmp_path / "class_labels_indices.csv")
    assert back == label_map
    np.testing.assert_array_equal(back.encode(["/m/c", "/m/a"]), [1, 0, 1])


def test_json_manifest(tmp_path, label_map):
    write_wav(tmp_path / "x1.wav")
    (tmp_path / "sub").mkdir()
    write_wav(tmp_path / "sub" / "x2.wav", seed=1)
    doc = {"data": [{"wav": "x1.wav", "labels": "/m/a,/m/c"}, {"wav": str(tmp_path / "sub" / "x2.wav"), "labels": "/m/b"}]}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    m = load_manifest(tmp_path / "m.json")
    assert m.ids == ["x1", "x2"]
    assert m.clips[0].path == tmp_path / "x1.wav"
    np.testing.assert_array_equal(m.targets(), [[1, 0, 1], [0, 1, 0]])


def test_csv_manifest_with_ids(tmp_path, label_map):
    write_wav(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text('id,path,labels\nclipA,a.wav,"/m/b,/m/c"\n')
    m = load_manifest(tmp_path / "m.csv")
    assert m.ids == ["clipA"]
    assert m.clips[0].labels == ("/m/b", "/m/c")


@pytest.mark.parametrize(
    "content, message",
    [
        ({"data": []}, "empty"),
        ({"data": [{"wav": "a.wav", "labels": "/m/zzz"}]}, "unknown label '/m/zzz'"),
        ({"data": [{"wav": "a.wav", "labels": "/m/a"}, {"wav": "d/a.wav", "labels": "/m/a"}]}, "duplicate clip id 'a'"),
        ({"rows": []}, "expected"),
        ({"data": [{"labels": "/m/a"}]}, "needs a 'wav' field"),
    ],
)
def test_manifest_errors(tmp_path, label_map, content, message):
    (tmp_path / "m.json").write_text(json.dumps(content))
    with pytest.raises(UserError, match=message):
        load_manifest(tmp_path / "m.json")


def test_manifest_missing_files(tmp_path, label_map):
    with pytest.raises(UserError, match="not found"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(tmp_path / "m.json")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(UserError, match="unknown format"):
        load_manifest(tmp_path / "m.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.json").write_text('{"data": [{"wav": "a.wav"}]}')
    with pytest.raises(UserError, match="label map .* not found"):
        load_manifest(tmp_path / "sub" / "m.json")


def test_read_audio_downmix_and_resample(tmp_path):
    data = write_wav(tmp_path / "st.wav", seconds=1.0, sr=44100, channels=2)
    wave = read_audio(tmp_path / "st.wav", 16000)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.shape[0] == 16000
    # A 16 kHz file comes back unchanged except for the downmix.
    write_wav(tmp_path / "m16.wav", seconds=0.25, channels=3)
    raw, _ = sf.read(tmp_path / "m16.wav", dtype="float32")
    np.testing.assert_allclose(read_audio(tmp_path / "m16.wav", 16000).numpy(), raw.mean(axis=1), atol=1e-7)
    assert data.shape[1] == 2


def test_read_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "missing.wav", 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEgarbage")
    with pytest.raises(AudioError, match="unreadable audio"):
        read_audio(tmp_path / "bad.wav", 16000)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        read_audio(tmp_path / "empty.wav", 16000)
