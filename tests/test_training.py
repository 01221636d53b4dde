"""Training loop, config validation, checkpoints and export, on tiny models and data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dass_distill.errors import UserError
from dass_distill.training.config import load_config
from dass_distill.training.schedule import lr_factor
from dass_distill.training.sampler import ResumableSampler
from helpers import base_overrides, latest_weights


# ------------------------------------------------------------------ config
def test_config_errors_are_one_line(tmp_path, synth_data):
    good = base_overrides(synth_data, tmp_path / "run")
    load_config(None, good)  # valid
    assert load_config(None, good + ["model=ast"]).model == "ast"  # family alias: `train --model ast`
    with pytest.raises(UserError, match="optim.lrr: Extra inputs are not permitted"):
        load_config(None, good + ["optim.lrr=3"])
    with pytest.raises(UserError, match="optim.batch_size"):
        load_config(None, good + ["optim.batch_size=many"])
    with pytest.raises(UserError, match="data.train: .* does not exist|does not exist"):
        load_config(None, good + [f"data.train={tmp_path / 'missing.json'}"])
    with pytest.raises(UserError, match="unknown model 'resnet'"):
        load_config(None, good + ["model=resnet"])
    with pytest.raises(UserError, match="key=value"):
        load_config(None, good + ["optim.lr"])
    with pytest.raises(UserError, match="config .* not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_paths_relative_to_config_file(tmp_path, synth_data, monkeypatch):
    root = Path(synth_data["root"])
    cfg_file = root / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": "dass_tiny", "data": {"train": "train.json"}}))
    cfg = load_config(cfg_file)
    assert cfg.data.train == root / "train.json"
    # ... while paths given on the command line are relative to the working directory
    monkeypatch.chdir(root.parent)
    cfg = load_config(cfg_file, [f"data.eval={root.name}/eval.json"])
    assert cfg.data.train == root / "train.json" and cfg.data.eval == root / "eval.json"


def test_lr_schedule_warmup_and_epoch_decay():
    f = lambda s: lr_factor(s, steps_per_epoch=10, warmup_steps=4, decay_start_epoch=2, decay=0.5)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == 1.0 and f(10) == 0.5 and f(25) == 0.25


def test_sampler_resumes_and_shards():
    full = list(ResumableSampler(10, seed=3))
    s = ResumableSampler(10, seed=3)
    s.set_epoch(0, skip=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(1)
    assert list(s) != full and sorted(x.index for x in s) == list(range(10))
    assert all(x.view == -1 and x.partner == -1 and x.lam == 1.0 for x in full)  # no views, no mixup
    shards = [list(ResumableSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(x) == 4 for x in shards) and {x.index for x in sum(shards, [])} == set(range(10))


# ------------------------------------------------------------------ training runs
def test_train_with_cache_resume_and_export(tmp_path, synth_data):
    """Teacher -> cache -> distilled student; resume continues; export reproduces."""
    from dass_distill.caching import build_cache
    from dass_distill.data.manifest import load_manifest
    from dass_distill.export import export_run
    from dass_distill.inference import load_tagger
    from dass_distill.logit_cache import LogitCacheReader
    from dass_distill.teachers import load_teacher
    from dass_distill.training.loop import train

    # An AST teacher, briefly trained on labels, then exported as a transformers folder.
    t_summary = train(load_config(None, base_overrides(synth_data, tmp_path / "teacher", model="ast_tiny",
                                                       **{"optim.max_steps": 3})))
    assert t_summary["steps"] == 3 and not t_summary["distilled"]
    export_run(tmp_path / "teacher", tmp_path / "teacher_export")
    teacher = load_teacher(f"ast:{tmp_path / 'teacher_export'}")
    manifest = load_manifest(synth_data["train_manifest"])
    report = build_cache([teacher], manifest, tmp_path / "cache.h5", num_workers=0, command="test")
    assert report.written == {"ast": len(manifest)}
    reader = LogitCacheReader(tmp_path / "cache.h5")
    ids = manifest.ids[:3]
    with torch.no_grad():
        from dass_distill.data.audio import read_audio

        live = teacher.logits([read_audio(c.path, 16000) for c in manifest.clips[:3]]).numpy()
    np.testing.assert_allclose(reader.get(ids, "ast"), live.astype(np.float16).astype(np.float32))
    assert reader.provenance("ast")["checkpoint_sha256"] == teacher.checkpoint_sha256

    # Student with KD: 6 steps in one go ...
    over = base_overrides(synth_data, tmp_path / "full", **{"distill.cache": tmp_path / "cache.h5",
                                                            "optim.epochs": 2, "save_every": 3})
    full = train(load_config(None, over))
    assert full["distilled"] and full["steps"] == 12
    # ... and the same run stopped after 6 steps, then resumed by re-running the same config.
    stop = base_overrides(synth_data, tmp_path / "resumed", **{"distill.cache": tmp_path / "cache.h5",
                                                                "optim.epochs": 2, "save_every": 3})
    train(load_config(None, stop + ["optim.max_steps=6"]))
    resumed = train(load_config(None, stop))
    assert resumed["steps"] == 12
    w_full = latest_weights(tmp_path / "full")
    w_res = latest_weights(tmp_path / "resumed")
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], rtol=1e-5, atol=1e-6)

    loss_rows = lambda d: [r for r in (d / "metrics.csv").read_text().splitlines() if ",train,loss," in r]
    assert loss_rows(tmp_path / "resumed")[-6:] == loss_rows(tmp_path / "full")[-6:]

    # Export the best checkpoint, load it back and tag a clip.
    report = export_run(tmp_path / "full", tmp_path / "student_export")
    assert report.max_abs_diff < 1e-4 and report.tag == "best"
    cfg = json.loads((tmp_path / "student_export" / "config.json").read_text())
    assert cfg["training"]["cache"].endswith("cache.h5")
    assert (tmp_path / "student_export" / "README.md").read_text().count("distilled") >= 1
    tags = load_tagger(tmp_path / "student_export").tag_file(manifest.clips[0].path, top_k=3)
    assert len(tags) == 3 and all(0.0 <= s <= 1.0 for _, s in tags)


def test_zero2_bf16_checkpoint_consolidates(tmp_path, synth_data):
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train

    over = base_overrides(synth_data, tmp_path / "z2", **{"deepspeed.zero_stage": 2, "deepspeed.precision": "bf16",
                                                           "deepspeed.gradient_accumulation_steps": 2,
                                                           "optim.max_steps": 2, "data.eval": "null"})
    summary = train(load_config(None, over))
    assert summary["steps"] == 2 and summary["best_mAP"] is None
    # with gradient accumulation, logging and checkpoints happen on optimizer steps only
    loss_steps = [r.split(",")[0] for r in (tmp_path / "z2" / "metrics.csv").read_text().splitlines()
                  if ",train,loss," in r]
    assert loss_steps == ["1", "2"]
    assert sorted(p.name for p in (tmp_path / "z2" / "checkpoints").glob("step_*")) == ["step_0000002"]
    model, info, _, tag = load_trained_model(tmp_path / "z2")
    assert tag == "step_0000002" and info.name == "dass_tiny"
    assert all(p.dtype == torch.float32 for p in model.module.parameters())


def test_cache_label_map_mismatch_is_refused(tmp_path, synth_data):
    from dass_distill.logit_cache import LogitCacheWriter
    from dass_distill.training.loop import train

    from dass_distill.data.manifest import load_manifest

    manifest = load_manifest(synth_data["train_manifest"])
    path = tmp_path / "other.h5"
    with LogitCacheWriter(path, manifest.ids, ["x", "y"], ["X", "Y"], {"t": {"name": "t"}}) as w:
        w.write("t", manifest.ids, np.random.default_rng(0).standard_normal((len(manifest), 2)))
    over = base_overrides(synth_data, tmp_path / "run", **{"distill.cache": path})
    with pytest.raises(UserError, match="different label map"):
        train(load_config(None, over))


def test_missing_cache_rows_policy(tmp_path, synth_data):
    from dass_distill.data.manifest import load_manifest
    from dass_distill.logit_cache import LogitCacheWriter
    from dass_distill.training.loop import train

    manifest = load_manifest(synth_data["train_manifest"])
    lm = manifest.label_map
    path = tmp_path / "partial.h5"
    half = manifest.ids[: len(manifest) // 2]
    with LogitCacheWriter(path, half, list(lm.ids), list(lm.names), {"t": {"name": "t"}}) as w:
        w.write("t", half, np.random.default_rng(0).standard_normal((len(half), len(lm))))
    over = base_overrides(synth_data, tmp_path / "run", **{"distill.cache": path, "optim.max_steps": 1})
    with pytest.raises(UserError, match=f"{len(manifest) - len(half)} training clips have no logits"):
        train(load_config(None, over))
    summary = train(load_config(None, over + ["distill.missing=labels_only"]))
    assert summary["steps"] == 1 and summary["distilled"]
    gap = len(manifest) - len(half)
    assert summary["cache_missing"] == {"policy": "labels_only", "skipped": 0, "labels_only": gap}
    assert f"0,0,data,cache_missing_labels_only,{gap}" in (tmp_path / "run" / "metrics.csv").read_text()
    summary = train(load_config(None, base_overrides(synth_data, tmp_path / "skip", **{
        "distill.cache": path, "optim.max_steps": 1, "distill.missing": "skip"})))
    assert summary["cache_missing"] == {"policy": "skip", "skipped": gap, "labels_only": 0}


def test_pretrained_vmamba_checkpoint_initialises_backbone(tmp_path, synth_data):
    from dass_distill.students import create_model
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import train

    torch.manual_seed(5)
    state = {k: torch.randn_like(v) for k, v in create_model("dass_tiny", num_classes=1000).state_dict().items()}
    state["patch_embed.0.weight"] = torch.randn(12, 3, 3, 3)  # an RGB stem, as ImageNet VMamba has
    torch.save({"model": state}, tmp_path / "vssm.pth")
    over = base_overrides(synth_data, tmp_path / "run", **{"pretrained": tmp_path / "vssm.pth", "optim.max_steps": 1,
                                                            "optim.lr": 1e-12, "optim.warmup_steps": 0,
                                                            "data.eval": "null"})
    train(load_config(None, over))
    model, *_ = load_trained_model(tmp_path / "run")
    torch.testing.assert_close(model.module.patch_embed[0].weight, state["patch_embed.0.weight"].sum(1, keepdim=True),
                               rtol=1e-4, atol=1e-6)
    assert model.module.classifier.head.weight.shape[0] == 12


def test_resume_with_another_config_is_refused(tmp_path, synth_data):
    from dass_distill.training.loop import train

    over = base_overrides(synth_data, tmp_path / "run", **{"optim.max_steps": 2})
    train(load_config(None, over))
    with pytest.raises(UserError, match=r"another config \(optim.lr: 0.001 -> 0.002; seed: 0 -> 1\)"):
        train(load_config(None, over + ["optim.lr=2e-3", "seed=1"]))
    # how long it runs may change: two more steps continue the same run
    assert train(load_config(None, over[:-1] + ["optim.max_steps=4", "log_every=2"]))["steps"] == 4
