"""Training at scale on CPU: the DASS recipe's sampling and mixup, fp32 SSM constants under
bf16, NaN handling, weight averaging, ZeRO 0/2 on two processes, and exact resume after a
real SIGKILL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import base_overrides, clean_env, kill_after_checkpoint

from dass_distill.data.dataset import ClipDataset, Sample, collate
from dass_distill.data.manifest import load_manifest
from dass_distill.errors import UserError
from dass_distill.training.config import load_config
from dass_distill.training.sampler import ResumableSampler, balanced_weights

RECIPE = Path(__file__).resolve().parents[1] / "dass_distill" / "configs" / "dass_audioset.yaml"
ENV = {**clean_env(), "DS_ACCELERATOR": "cpu", "DASS_DISTILL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def train_losses(run: Path) -> dict[int, str]:
    """step -> logged training loss (as written) from a run's metrics.csv."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["metric"] == "loss"]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate steps in the log: {steps}"
    return {int(r["step"]): r["value"] for r in rows}


def test_balanced_weights_by_hand():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    w = balanced_weights(targets)
    a, b, c = 1000 / 3.01, 1000 / 1.01, 1000 / 1.01
    np.testing.assert_allclose(w, [a, a + b, c, a], rtol=1e-6)


def test_sampler_draws_mixup_and_balanced_items_deterministically():
    weights = np.r_[np.full(50, 1.0), np.full(50, 9.0)]
    s = ResumableSampler(100, seed=4, weights=weights, mixup=0.5, mixup_alpha=10.0)
    first = list(s)
    assert first == list(ResumableSampler(100, seed=4, weights=weights, mixup=0.5, mixup_alpha=10.0))
    big = ResumableSampler(4000, seed=1, weights=np.r_[np.full(2000, 1.0), np.full(2000, 9.0)], mixup=0.5)
    items = list(big)
    assert 0.85 < np.mean([x.index >= 2000 for x in items]) < 0.95  # drawn 9:1
    mixed = [x for x in items if x.partner >= 0]
    assert 0.45 < len(mixed) / len(items) < 0.55
    lams = np.array([x.lam for x in mixed])
    assert abs(lams.mean() - 0.5) < 0.01 and 0.09 < lams.std() < 0.13  # Beta(10, 10): sd 0.109
    assert all(x.lam == 1.0 for x in items if x.partner < 0)
    s.set_epoch(1)
    assert list(s) != first


def test_mixup_item_mixes_waveforms_labels_and_teacher_targets(synth_data):
    from dass_distill.data.audio import read_audio
    from dass_distill.frontend import KaldiFbank

    manifest = load_manifest(synth_data["train_manifest"])
    fe = KaldiFbank(target_length=150)

    class Targets:  # a stand-in cache: one distinct row per clip
        def get(self, ids, views=None):
            return np.stack([np.full(12, float(manifest.ids.index(i)), np.float32) for i in ids])

    ds = ClipDataset(manifest, fe, 16000, Targets())
    batch = collate(ds.__getitems__([Sample(0, partner=5, lam=0.3), Sample(2)]))
    a, b = read_audio(manifest.clips[0].path, 16000), read_audio(manifest.clips[5].path, 16000)
    b = b[: a.numel()] if b.numel() >= a.numel() else torch.nn.functional.pad(b, (0, a.numel() - b.numel()))
    assert torch.equal(batch.features[0], fe(0.3 * a + 0.7 * b))
    t = manifest.targets()
    np.testing.assert_allclose(batch.labels[0].numpy(), 0.3 * t[0] + 0.7 * t[5], rtol=1e-6)
    np.testing.assert_array_equal(batch.labels[1].numpy(), t[2])
    assert batch.teacher_logits[:, 0].tolist() == [0.0, 2.0]
    assert batch.partner_logits[0, 0] == 5.0 and torch.isnan(batch.partner_logits[1]).all()
    assert batch.lam.tolist() == pytest.approx([0.3, 1.0])


def test_recipe_config_is_the_dass_recipe(synth_data):
    cfg = load_config(RECIPE, [f"data.train={synth_data['train_manifest']}"])
    o = cfg.optim
    assert (cfg.model, o.optimizer, o.lr, o.betas, o.weight_decay, o.batch_size) == (
        "dass_small", "adam", 1e-4, (0.95, 0.999), 5e-7, 12)
    assert (o.warmup_steps, o.epochs, o.lr_decay_start_epoch, o.lr_decay) == (1000, 5, 2, 0.5)
    assert cfg.data.balanced_sampling and (cfg.augment.mixup, cfg.augment.mixup_alpha) == (0.5, 10.0)
    assert (cfg.augment.freq_mask, cfg.augment.time_mask) == (48, 192)
    assert (cfg.distill.kd_weight, cfg.distill.temperature, cfg.distill.kd_loss) == (0.5, 1.0, "kl_softmax")
    assert cfg.weight_averaging.enabled and cfg.deepspeed.precision == "bf16"
    with pytest.raises(UserError, match=r"augment\.mixup: .*less than or equal to 1"):
        load_config(RECIPE, [f"data.train={synth_data['train_manifest']}", "augment.mixup=2"])
    with pytest.raises(UserError, match=r"optim\.optimizer: .*'adam' or 'adamw'"):
        load_config(RECIPE, [f"data.train={synth_data['train_manifest']}", "optim.optimizer=sgd"])


def test_ssm_constants_stay_fp32_under_bf16(tmp_path, synth_data):
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.loop import Trainer

    cfg = load_config(None, base_overrides(synth_data, tmp_path / "bf16", **{
        "deepspeed.precision": "bf16", "optim.max_steps": 2, "data.eval": "null", "optim.lr": 3e-3}))
    trainer = Trainer(cfg)
    trainer.train()
    params = dict(trainer.engine.module.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    model, *_ = load_trained_model(tmp_path / "bf16")
    for name, w in model.module.state_dict().items():
        if name.endswith(("A_logs", "Ds", "dt_projs_bias")):
            # updated in fp32: values a bf16 copy could not hold
            assert (w.bfloat16().float() != w).any(), name
    assert trainer.engine.torch_autocast_enabled() and trainer.engine.torch_autocast_dtype() == torch.bfloat16


def test_nonfinite_losses_are_skipped_counted_and_bounded(tmp_path, synth_data, monkeypatch):
    from dass_distill.losses import DistillationLoss
    from dass_distill.training.loop import train

    real = DistillationLoss.forward
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (2, 3):
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DistillationLoss, "forward", flaky)
    summary = train(load_config(None, base_overrides(synth_data, tmp_path / "nan", **{
        "optim.max_steps": 5, "optim.epochs": 2, "data.eval": "null"})))
    assert summary["steps"] == 5 and summary["nonfinite_losses"] == 2
    assert all(np.isfinite(float(v)) for v in train_losses(tmp_path / "nan").values())

    monkeypatch.setattr(DistillationLoss, "forward", lambda self, *a, **k: {**real(self, *a, **k),
                                                                             "loss": torch.tensor(float("inf"))})
    with pytest.raises(UserError, match="max_nonfinite=1"):
        train(load_config(None, base_overrides(synth_data, tmp_path / "inf", **{
            "optim.max_nonfinite": 1, "data.eval": "null"})))


def test_weight_averaging_of_epoch_end_weights(tmp_path, synth_data):
    from dass_distill.training.checkpoint import consolidated_state_dict, load_trained_model
    from dass_distill.training.loop import train

    run = tmp_path / "wa"
    summary = train(load_config(None, base_overrides(synth_data, run, **{
        "optim.epochs": 3, "weight_averaging.enabled": True, "weight_averaging.start_epoch": 2,
        "keep_checkpoints": 10, "augment.mixup": 0.5, "data.balanced_sampling": True})))
    assert summary["averaged_epochs"] == [2, 3] and summary["averaged_mAP"] is not None
    ckpts = run / "checkpoints"
    ends = [consolidated_state_dict(ckpts, f"step_{6 * e:07d}") for e in (2, 3)]  # 6 steps per epoch
    avg = consolidated_state_dict(ckpts, "averaged")
    for k in avg:
        torch.testing.assert_close(avg[k], (ends[0][k] + ends[1][k]) / 2, rtol=1e-6, atol=1e-7)
    model, _, _, tag = load_trained_model(run, "averaged")
    assert tag == "averaged"
    rows = (run / "metrics.csv").read_text()
    assert ",eval_averaged,mAP," in rows
    per_class = json.loads((run / "eval_per_class.json").read_text())
    assert per_class["step"] == 18 and len(per_class["per_class"]) == 12
    assert per_class["per_class"][0]["label"] and per_class["mAP"] == pytest.approx(
        np.nanmean([r["ap"] for r in per_class["per_class"]]))


def test_zero3_weight_average_and_consolidation(tmp_path, synth_data):
    """ZeRO-3 partitions the weights: the average gathers them, and the checkpoint consolidates to fp32."""
    from dass_distill.training.checkpoint import consolidated_state_dict, load_trained_model
    from dass_distill.training.loop import train

    run = tmp_path / "z3"
    summary = train(load_config(None, base_overrides(synth_data, run, **{
        "deepspeed.zero_stage": 3, "deepspeed.precision": "bf16", "data.eval": "null", "optim.epochs": 1,
        "weight_averaging.enabled": True, "deepspeed.gradient_clipping": 1.0})))
    assert summary["steps"] == 6 and summary["averaged_epochs"] == [1]
    model, _, _, tag = load_trained_model(run)
    end = consolidated_state_dict(run / "checkpoints", tag)
    avg = consolidated_state_dict(run / "checkpoints", "averaged")
    assert tag == "step_0000006" and set(avg) == set(end)
    for k in avg:  # one epoch: the average is the epoch-end weights
        torch.testing.assert_close(avg[k], end[k], rtol=0, atol=0)


def _train_cmd(run: Path, synth_data, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dass_distill.cli", "train", "--model", "dass_tiny", "--output-dir", str(run),
            *base_overrides(synth_data, run, **{
                "data.eval": "null", "optim.epochs": 2, "save_every": 1, "keep_checkpoints": 2,
                "augment.mixup": 0.5, "data.balanced_sampling": True, "weight_averaging.enabled": True,
                "data.num_workers": 1, "data.memoize_features": False})[1:], *extra]


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_matches_the_uninterrupted_curve(tmp_path, synth_data):
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, synth_data), env=ENV, check=True, capture_output=True, timeout=900)
    expected = train_losses(ref)
    assert sorted(expected) == list(range(1, 13))

    run = tmp_path / "run"
    proc = kill_after_checkpoint(_train_cmd(run, synth_data), run, ENV, "step_0000007")  # into the second epoch
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    resumed = subprocess.run(_train_cmd(run, synth_data), env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    assert train_losses(run) == expected  # step for step, to the printed digit
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert a["averaged_epochs"] == b["averaged_epochs"] == [1, 2]
    from dass_distill.training.checkpoint import consolidated_state_dict

    wa, wb = (consolidated_state_dict(r / "checkpoints", "averaged") for r in (ref, run))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_zero_0_and_2_on_two_cpu_processes(tmp_path, synth_data):
    from dass_distill.training.checkpoint import load_trained_model

    losses = {}
    for stage in (0, 2):
        run = tmp_path / f"z{stage}"
        cmd = [sys.executable, "-m", "dass_distill.cli", "train", "--procs", "2", "--model", "dass_tiny",
               "--output-dir", str(run), *base_overrides(synth_data, run, **{
                   "data.eval": "null", "optim.max_steps": 3, "deepspeed.zero_stage": stage})[1:]]
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["processes"] == 2 and summary["zero_stage"] == stage
        losses[stage] = train_losses(run)
        model, *_ = load_trained_model(run)
        assert all(p.dtype == torch.float32 for p in model.module.parameters())
    # same data, same maths: ZeRO-2's partitioned optimizer follows ZeRO-0's curve
    assert losses[0].keys() == losses[2].keys() == {1, 2, 3}
    for s in losses[0]:
        assert float(losses[0][s]) == pytest.approx(float(losses[2][s]), rel=1e-4)
