"""Embeddings (``dass-distill embed``, ``dass_distill.hear``): the clip embedding is exactly what
each family's classifier reads, frame embeddings are its time-resolved version with the right
timestamps, and the files and the HEAR API give the same numbers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from helpers import cli

import dass_distill.hear as hear
from dass_distill.data.manifest import load_manifest
from dass_distill.data.synth import synth_label_map
from dass_distill.embeddings import Embedder, embed
from dass_distill.errors import UserError
from dass_distill.frontend import KaldiFbank
from dass_distill.students import create_model, save_pretrained

TINY = {"depth": 2, "embed_dim": 32}


def _model(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=5, target_length=150, **kw).eval()


@pytest.mark.parametrize("name, kw", [("dass_tiny", {}), ("aum_tiny", TINY), ("ssamba_tiny", TINY),
                                      ("ssamba_tiny", {**TINY, "head": "cls"})])
def test_clip_embedding_is_what_the_classifier_reads(name, kw):
    model = _model(name, **kw)
    x = torch.randn(2, 173, 128, generator=torch.Generator().manual_seed(1))
    e = embed(model, x)
    head = model.get_classifier()
    if name.startswith("ssamba"):
        head = model.mlp_head  # LayerNorm + Linear over the pooled tokens
    with torch.no_grad():
        torch.testing.assert_close(head(e.clip), model(x), rtol=1e-4, atol=1e-5)
    assert e.frames.shape[0] == 2 and e.frames.shape[2] == e.clip.shape[1]
    assert torch.all(e.timestamps_ms[1:] > e.timestamps_ms[:-1]) and len(e.timestamps_ms) == e.frames.shape[1]
    if name == "dass_tiny" or kw.get("head") is None and name.startswith("ssamba"):
        # pooled over frequency, then over time: the clip embedding (DASS, SSAMBA's token mean)
        torch.testing.assert_close(e.frames.mean(dim=1), e.clip, rtol=1e-4, atol=1e-5)


def test_timestamps_follow_each_grid():
    x = torch.randn(1, 173, 128)
    dass = embed(_model("dass_tiny"), x)
    assert dass.frames.shape[1] == 6  # ceil(173 / 32)
    torch.testing.assert_close(dass.timestamps_ms[:2], torch.tensor([172.5, 492.5]))  # 16 and 48 frames
    aum = embed(_model("aum_tiny", **TINY), x)
    assert aum.frames.shape[1] == (173 - 16) // 16 + 1
    torch.testing.assert_close(aum.timestamps_ms[:2], torch.tensor([92.5, 252.5]))  # patch centres: frames 8, 24
    ssamba = embed(_model("ssamba_tiny", **TINY), x)  # stride 10
    assert ssamba.frames.shape[1] == (173 - 16) // 10 + 1
    torch.testing.assert_close(ssamba.timestamps_ms[1] - ssamba.timestamps_ms[0], torch.tensor(100.0))


@pytest.fixture(scope="module")
def aum_dir(tmp_path_factory):
    lm = synth_label_map()
    folder = tmp_path_factory.mktemp("aum")
    model = create_model("aum_tiny", num_classes=len(lm), target_length=150, **TINY)
    return save_pretrained(model.eval(), folder, KaldiFbank(target_length=150), list(lm.ids), list(lm.names))


def test_embed_files_and_hear_api_agree(tmp_path, aum_dir, student_dir, synth_data):
    clips = [c.path for c in load_manifest(synth_data["eval_manifest"]).clips[:3]]
    for folder in (student_dir, aum_dir):
        cli("embed", folder, *clips, "--output", tmp_path / "e.h5")
        cli("embed", folder, *clips, "--output", tmp_path / "e.npz")
        embedder = Embedder(folder)
        direct = embedder.file(clips[1])
        with h5py.File(tmp_path / "e.h5") as f:
            assert [f[g].attrs["path"] for g in sorted(f)] == [str(c) for c in clips]
            np.testing.assert_allclose(f["000001/clip"][()], direct.clip[0].numpy(), rtol=1e-5, atol=1e-6)
            assert f["000001/frames"].shape == tuple(direct.frames.shape[1:])
            np.testing.assert_allclose(f["000001/timestamps_ms"][()], direct.timestamps_ms.numpy())
        npz = np.load(tmp_path / "e.npz")
        assert list(npz["paths"]) == [str(c) for c in clips]
        np.testing.assert_allclose(npz["1/frames"], direct.frames[0].numpy(), rtol=1e-5, atol=1e-6)

        model = hear.load_model(str(folder))
        assert model.sample_rate == 16000 and model.scene_embedding_size == direct.clip.shape[1]
        from dass_distill.data.audio import read_audio

        waves = torch.stack([read_audio(c, 16000)[:16000] for c in clips])  # 1 s each
        scene = hear.get_scene_embeddings(waves, model)
        emb, ts = hear.get_timestamp_embeddings(waves, model)
        assert scene.shape == (3, model.scene_embedding_size)
        assert emb.shape[:2] == ts.shape and emb.shape[0] == 3 and emb.shape[2] == model.timestamp_embedding_size
        torch.testing.assert_close(scene[1], embedder.waves(waves[1:2]).clip[0], rtol=1e-4, atol=1e-5)


def test_embed_errors(tmp_path, student_dir, synth_data):
    clip = load_manifest(synth_data["eval_manifest"]).clips[0].path
    with pytest.raises(UserError, match=r"\.h5 \(HDF5\) or \.npz"):
        from dass_distill.embeddings import write_embeddings

        write_embeddings(tmp_path / "e.txt", {str(clip): Embedder(student_dir).file(clip)}, "x")
    lm = synth_label_map()
    cnn = save_pretrained(create_model("cnn_baseline", num_classes=len(lm)), tmp_path / "cnn",
                          KaldiFbank(target_length=150), list(lm.ids), list(lm.names))
    with pytest.raises(UserError, match="student folders"):
        Embedder(cnn)
    proc = cli("embed", student_dir, tmp_path / "missing.wav", "--output", tmp_path / "x.h5", check=False)
    assert proc.returncode != 0 and "missing.wav" in proc.stderr
