import math

import numpy as np
import pytest
import torch
import yaml

from teacher_checkpoints import original_ast_state_dict

from dass_distill.caching import build_cache
from dass_distill.data.audio import read_audio
from dass_distill.data.manifest import load_manifest
from dass_distill.errors import UserError
from dass_distill.logit_cache import LogitCacheReader
from dass_distill.teachers import CheckpointError, Ensemble, combine_logits, load_teacher
from dass_distill.training.config import load_config
from dass_distill.training.teacher_targets import open_teacher_targets, teacher_summary


def test_combine_formulas_by_hand():
    t = torch.tensor([[[2.0, -1.0]], [[-0.5, 3.0]]])  # 2 members, 1 clip, 2 classes
    out = combine_logits(t, "logit_mean", [1, 3])
    torch.testing.assert_close(out, torch.tensor([[(2.0 - 1.5) / 4, (-1.0 + 9.0) / 4]]))

    def sig(x):
        return 1 / (1 + math.exp(-x))

    p0 = (sig(2.0) + 3 * sig(-0.5)) / 4
    p1 = (sig(-1.0) + 3 * sig(3.0)) / 4
    expected = torch.tensor([[math.log(p0 / (1 - p0)), math.log(p1 / (1 - p1))]])
    torch.testing.assert_close(combine_logits(t, "prob_mean", [1, 3]), expected)
    # equal weights by default; one member is the identity for both modes
    torch.testing.assert_close(combine_logits(t, "logit_mean"), t.mean(0))
    torch.testing.assert_close(combine_logits(t[:1], "prob_mean"), t[0], rtol=1e-6, atol=1e-6)
    # a member without logits for a clip leaves the clip without a target
    t_nan = t.clone()
    t_nan[1, 0, 0] = float("nan")
    assert torch.isnan(combine_logits(t_nan)[0, 0]) and not torch.isnan(combine_logits(t_nan)[0, 1])
    with pytest.raises(ValueError, match="unknown ensemble combination"):
        combine_logits(t, "max")
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        combine_logits(t, "prob_mean", [1, -1])


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    folder = tmp_path_factory.mktemp("members")
    for i in range(2):
        torch.save(original_ast_state_dict(dim=64, depth=1, classes=12, fstride=16, tstride=16, seed=10 + i),
                   folder / f"ast{i}.pth")
    (folder / "ens.yaml").write_text(yaml.safe_dump({
        "kind": "ensemble", "name": "duo", "combine": "logit_mean", "weights": [1, 3],
        "members": ["ast:ast0.pth", {"kind": "ast", "path": "ast1.pth", "name": "second",
                                      "long_clips": {"long": "truncate"}}],
    }))
    return folder


def test_ensemble_yaml(members, tmp_path):
    ens = load_teacher(str(members / "ens.yaml"))
    assert isinstance(ens, Ensemble) and ens.member_names == ["ast", "second"]
    assert ens.members[1].clip_policy.long == "truncate" and ens.members[0].clip_policy.long == "windows"
    waves = [torch.randn(16000 * 2) * 0.1, torch.randn(16000) * 0.1]
    separate = torch.stack([m.logits(waves) for m in ens.members])
    torch.testing.assert_close(ens.member_logits(waves, 16000), separate)
    torch.testing.assert_close(ens.logits(waves, 16000), (separate[0] + 3 * separate[1]) / 4)
    # 8 kHz audio is resampled for each member
    assert ens.member_logits([w[::2] for w in waves], 8000).shape == (2, 2, 12)

    def bad(doc, match):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(CheckpointError, match=match):
            load_teacher(str(tmp_path / "bad.yaml"))

    same = {"kind": "ensemble", "members": [f"ast:{members}/ast0.pth", f"ast:{members}/ast1.pth"]}
    bad(same, "unique names")
    bad({**same, "members": [str(members / "ens.yaml")]}, "cannot be nested")
    bad({**same, "members": [{"path": "x.pth"}]}, "needs a 'kind'")
    bad({"kind": "ensemble", "members": []}, "non-empty 'members'")
    bad({"kind": "ensemble", "members": [f"ast:{members}/ast0.pth"], "combine": "median"}, "unknown combination")


def test_cache_keeps_members_and_training_combines_them(members, synth_data, tmp_path):
    manifest = load_manifest(synth_data["train_manifest"])
    manifest = manifest.subset(set(manifest.ids[:6]))
    ens = load_teacher(str(members / "ens.yaml"))
    out = tmp_path / "ens.h5"
    build_cache([ens], manifest, out, batch_size=4, num_workers=0, command="test")
    reader = LogitCacheReader(out)
    assert reader.teachers == ["ast", "second"]
    prov = reader.provenance("second")
    assert prov["ensemble"] == {"name": "duo", "members": ["ast", "second"], "default_combine": "logit_mean",
                                "default_weights": [1, 3]}
    assert prov["clips"]["long"] == "truncate" and prov["labels"].startswith("positional")
    waves = [read_audio(c.path, 16000) for c in manifest.clips]
    live = ens.member_logits(waves, 16000).numpy()
    for i, m in enumerate(["ast", "second"]):
        np.testing.assert_allclose(reader.get(manifest.ids, m), live[i], rtol=2e-3, atol=2e-3)  # fp16 storage

    def targets(**distill):
        cfg = load_config(None, [f"data.train={synth_data['train_manifest']}", f"distill.cache={out}",
                                 "distill.missing=skip"] + [f"distill.{k}={v}" for k, v in distill.items()])
        return open_teacher_targets(cfg, manifest, manifest.label_map)[0]

    cached = torch.from_numpy(np.stack([reader.get(manifest.ids, m).astype(np.float32) for m in ["ast", "second"]]))
    t = targets()  # the only ensemble, with its own default combination
    assert t.members == ["ast", "second"] and t.teacher == "duo"
    np.testing.assert_allclose(t.get(manifest.ids), ((cached[0] + 3 * cached[1]) / 4).numpy(), rtol=1e-6, atol=1e-6)
    t = targets(combine="prob_mean", member_weights="{ast: 1.0, second: 1.0}")
    np.testing.assert_allclose(t.get(manifest.ids), combine_logits(cached, "prob_mean").numpy(), rtol=1e-5, atol=1e-5)
    t = targets(teacher="second")
    np.testing.assert_array_equal(t.get(manifest.ids), reader.get(manifest.ids, "second"))
    summary = teacher_summary(targets(teacher="[ast, second]"))
    assert summary["kind"] == "ensemble" and set(summary["checkpoint_sha256"]) == {"ast", "second"}
    with pytest.raises(UserError, match="'third' is not in"):
        targets(teacher="third")
    with pytest.raises(UserError, match="not a member"):
        targets(member_weights="{other: 1}")
