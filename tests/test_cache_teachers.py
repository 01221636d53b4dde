"""``dass-distill cache`` with AST, HTS-AT and SSLAM checkpoints in their original release
formats, and a student trained on the combination of their cached logits."""

import hashlib
import json

import numpy as np
import pytest
import yaml

from teacher_checkpoints import write_original_teachers
from helpers import cli

from dass_distill.data.audio import read_audio
from dass_distill.data.manifest import load_manifest
from dass_distill.logit_cache import LogitCacheReader
from dass_distill.teachers import load_teacher


@pytest.mark.slow
def test_cache_three_original_teachers_then_train(tmp_path, synth_data):
    ckpts = write_original_teachers(tmp_path)
    train = synth_data["train_manifest"]
    out = tmp_path / "teachers.h5"
    proc = cli("cache", "--teacher", f"ast:{ckpts['ast']}", "--teacher", f"htsat:{ckpts['htsat']}",
               "--teacher", f"sslam:{ckpts['sslam']}", "--data", train, "--out", out, "--num-workers", 1,
               "--batch-size", 8)
    assert "ast: 24, htsat: 24, sslam: 24" in proc.stderr

    manifest = load_manifest(train)
    reader = LogitCacheReader(out)
    assert reader.teachers == ["ast", "htsat", "sslam"]
    for kind, path in ckpts.items():
        prov = reader.provenance(kind)
        assert prov["kind"] == kind and prov["checkpoint_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        teacher = load_teacher(f"{kind}:{path}")
        live = teacher.logits([read_audio(c.path, teacher.sample_rate) for c in manifest.clips[:5]]).numpy()
        assert np.abs(live).max() > 0.05  # real signal, not an all-zero model
        np.testing.assert_allclose(reader.get(manifest.ids[:5], kind), live, rtol=3e-3, atol=3e-3)  # fp16 storage
    assert reader.provenance("htsat")["sample_rate"] == 32000
    assert reader.provenance("htsat")["front_end"] != reader.provenance("ast")["front_end"]

    info = cli("cache-info", out).stderr
    assert "htsat" in info and "sslam" in info and "windows, hop 5.0 s" in info

    # an ensemble described in YAML caches its members, then training combines them
    (tmp_path / "ens.yaml").write_text(yaml.safe_dump({
        "kind": "ensemble", "name": "ast_htsat", "combine": "prob_mean",
        "members": [f"ast:{ckpts['ast']}", f"htsat:{ckpts['htsat']}"]}))
    ens_out = tmp_path / "ens.h5"
    cli("cache", "--teacher", tmp_path / "ens.yaml", "--data", train, "--out", ens_out, "--num-workers", 0,
        "--long-clips", "truncate")
    ens_reader = LogitCacheReader(ens_out)
    assert ens_reader.provenance("htsat")["ensemble"]["name"] == "ast_htsat"
    assert ens_reader.provenance("ast")["clips"]["long"] == "truncate"
    cli("train", "--model", "dass_tiny", "--output-dir", tmp_path / "run", f"data.train={train}",
        f"distill.cache={ens_out}", "distill.member_weights={ast: 1, htsat: 3}", "optim.max_steps=2",
        "data.target_length=150", "data.num_workers=0", "optim.batch_size=4", "optim.warmup_steps=1")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["distilled"] and summary["teacher"]["name"] == "ast_htsat"
    assert summary["teacher"]["combine"] == "prob_mean" and summary["teacher"]["weights"] == [1.0, 3.0]
