"""Label prior, prior-logit head bias, chance mAP and the collapse monitor."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dass_distill.metrics import average_precision
from dass_distill.training.health import (LATE_SHARE, SPREAD_DROP, CollapseMonitor, FeatureSpread, late_start_advice,
                                          likely_causes)
from dass_distill.training.label_prior import (
    PRIOR_FLOOR, chance_average_precision, chance_map, label_prior, prior_bce, prior_logits,
)


def test_label_prior_plain_and_weighted():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(label_prior(y), [0.75, 0.5, PRIOR_FLOOR])
    w = np.array([1.0, 1.0, 2.0, 0.0])  # clip 3 never drawn, clip 2 twice as often
    np.testing.assert_allclose(label_prior(y, w), [2 / 4, 3 / 4, PRIOR_FLOOR])
    with pytest.raises(ValueError):
        label_prior(np.zeros((0, 3)))


def test_prior_logits_and_bce_match_torch():
    p = np.array([0.5, 0.1, 0.02, 0.9])
    b = prior_logits(p)
    np.testing.assert_allclose(torch.sigmoid(torch.tensor(b)).numpy(), p, rtol=1e-12)
    # the BCE of predicting the prior for every clip of a set whose class rates are the prior
    y = np.array([[1, 1, 1, 0]] + [[1, 0, 0, 1]] * 4 + [[0, 0, 0, 1]] * 5, dtype=np.float64)
    rates = y.mean(axis=0)
    logits = torch.tensor(prior_logits(rates)).expand(len(y), -1)
    want = F.binary_cross_entropy_with_logits(logits, torch.tensor(y)).item()
    assert prior_bce(rates) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("n,r", [(5, 1), (6, 2), (7, 3), (8, 8), (1, 1)])
def test_chance_average_precision_is_the_mean_over_all_rankings(n, r):
    scores = np.arange(n, 0, -1, dtype=np.float64)[:, None]  # item i ranked i-th
    aps = []
    for pos in itertools.combinations(range(n), r):
        t = np.zeros((n, 1))
        t[list(pos)] = 1
        aps.append(average_precision(scores, t)[0])
    assert chance_average_precision(r, n) == pytest.approx(np.mean(aps), rel=1e-12)


def test_chance_map_skips_classes_without_positives():
    t = np.zeros((10, 3))
    t[:2, 0] = 1
    t[:5, 1] = 1
    assert chance_map(t) == pytest.approx((chance_average_precision(2, 10) + chance_average_precision(5, 10)) / 2)


def test_monitor_flags_a_loss_at_the_prior_once_after_warm_up():
    mon = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=100)
    warnings = [mon.update(s, 0.40 + 0.01 * math.sin(s)) for s in range(1, 300)]
    found = [(s, w) for s, w in zip(range(1, 300), warnings) if w]
    assert len(found) == 1 and found[0][0] == 100 and "label prior" in found[0][1]
    assert mon.report()["collapsed"] and mon.report()["reasons"] == ["training loss at the label prior"]


def test_monitor_quiet_for_a_learning_run():
    mon = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50)
    for s in range(1, 400):
        assert mon.update(s, 0.40 * math.exp(-s / 100)) is None
    assert mon.evaluated(400, 0.7) is None
    rep = mon.report()
    assert not rep["collapsed"] and rep["final_train_bce"] < 0.1 and rep["final_eval_mAP"] == 0.7


def _plateau_then_learn(mon: CollapseMonitor, plateau: int, total: int) -> None:
    for s in range(1, total + 1):
        mon.update(s, 0.40 if s <= plateau else 0.40 * math.exp(-(s - plateau) / 100))


def test_monitor_flags_a_run_that_left_the_prior_late():
    # Measured on the spoken words: dass_tiny with frequency masks sat at the prior for 36-56%
    # of its 2160 steps and ended 0.31-0.57; without them 17-23% and 0.57-0.63.
    total = 2000
    late = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50)
    _plateau_then_learn(late, int(0.55 * total), total)
    rep = late.report(total)
    assert not rep["collapsed"] and rep["left_prior_late"]
    assert LATE_SHARE * total <= rep["last_step_at_prior"] <= 0.55 * total + 60  # the EMA lags the loss a little
    early = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50)
    _plateau_then_learn(early, int(0.2 * total), total)
    assert early.report(total)["left_prior_late"] is False
    restored = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50)
    restored.load_state_dict(late.state_dict())
    assert restored.report(total) == rep
    stuck = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50)
    _plateau_then_learn(stuck, total, total)
    assert stuck.report(total)["collapsed"] and not stuck.report(total)["left_prior_late"]  # a collapse, not late
    assert late.report()["left_prior_late"] is None  # without the run's length: not judged


def test_late_start_advice_names_the_frequency_masks_only_where_they_apply():
    text = late_start_advice(1100, 2160, 24, from_cache_views=False)
    assert "step 1100 of 2160 (51% of the run)" in text and "augment.freq_mask=0" in text
    assert "freq_mask" not in late_start_advice(1100, 2160, 24, from_cache_views=True)  # the views carry their masks
    assert "freq_mask" not in late_start_advice(1100, 2160, 0, from_cache_views=False)


def test_monitor_flags_chance_level_eval():
    mon = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50)
    assert mon.evaluated(10, 0.21) is None  # before warm-up: not judged
    assert "chance level" in mon.evaluated(60, 0.21)
    assert mon.evaluated(70, 0.22) is None  # once
    assert mon.report()["reasons"] == ["eval mAP at chance level"]
    assert mon.evaluated(80, 0.5) is None and not mon.report()["collapsed"]  # judged on the final state


def test_monitor_tells_constant_outputs_from_a_slow_start():
    mon = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50, start_spread=0.35)
    assert "same for every clip" not in mon.evaluated(60, 0.21, spread=0.3)  # different features, no signal yet
    assert not mon.features_collapsed
    mon = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50, start_spread=0.011)
    assert "same for every clip" not in mon.evaluated(60, 0.21, spread=0.009)  # a ViT's pooled tokens start close
    mon = CollapseMonitor(prior_bce=0.40, chance_map=0.2, check_after=50, start_spread=0.35)
    assert "same for every clip (spread 2.0e-04)" in mon.evaluated(60, 0.21, spread=2e-4)
    rep = mon.report()
    assert rep["reasons"] == ["eval mAP at chance level", "the same features for every clip"]
    assert rep["final_feature_spread"] == 2e-4 and rep["start_feature_spread"] == 0.35


def test_feature_spread_against_numpy():
    head = torch.nn.Linear(3, 2)
    rows = torch.randn(10, 3) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    spread = FeatureSpread(head)
    head(rows[:4]), head(rows[4:])  # two batches
    got = spread.close()
    x = rows.double().numpy()
    assert got == pytest.approx(x.std(0, ddof=1).mean() / np.abs(x).mean(), rel=1e-9)
    head(rows)  # the hook is gone
    assert spread.n == 10
    same = FeatureSpread(head)
    head(torch.ones(5, 3))
    assert same.close() == pytest.approx(0.0, abs=1e-9)


def test_likely_causes_name_the_step_size_when_outputs_are_constant():
    causes = likely_causes("adam", 1e-3, 5e-7, 1000, "prior", 0.0, False, warmup_steps=50, batch_size=8,
                           features_collapsed=True)
    assert "optim.lr=0.001 after 50 warm-up steps at optim.batch_size=8" in causes[0]
    assert not any("lost their dependence" in c for c in likely_causes("adam", 1e-3, 5e-7, 1000, "prior", 0.0, False))


def test_likely_causes_name_the_coupled_decay_first():
    causes = likely_causes("adam", 1e-3, 0.05, 1000, "prior", 0.5, False)
    assert "optim.optimizer=adamw" in causes[0]
    assert not any("weight_decay" in c for c in likely_causes("adamw", 1e-3, 0.05, 1000, "prior", 0.5, False))
    assert any("head_bias=prior" in c for c in likely_causes("adamw", 1e-3, 0.0, 1000, "zero", 0.5, False))


# ------------------------------------------------------------------ in the training loop
def test_train_starts_the_head_at_the_prior_and_reports_health(tmp_path, synth_data):
    from dass_distill.data.manifest import load_manifest
    from dass_distill.training.checkpoint import load_trained_model
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train
    from helpers import base_overrides

    over = base_overrides(synth_data, tmp_path / "run", **{"optim.max_steps": 1, "optim.lr": 1e-12,
                                                           "optim.warmup_steps": 0})
    summary = train(load_config(None, over))
    model, *_ = load_trained_model(tmp_path / "run")
    train_targets = load_manifest(synth_data["train_manifest"]).targets()
    want = torch.tensor(prior_logits(label_prior(train_targets)), dtype=torch.float32)
    torch.testing.assert_close(model.module.get_classifier().bias, want, rtol=0, atol=1e-5)
    health = summary["health"]
    assert health["prior_bce"] == pytest.approx(prior_bce(label_prior(train_targets)), rel=1e-5)
    assert health["chance_mAP"] == pytest.approx(chance_map(load_manifest(synth_data["eval_manifest"]).targets()),
                                                 rel=1e-5)
    zero = train(load_config(None, base_overrides(synth_data, tmp_path / "zero", **{
        "optim.max_steps": 1, "optim.lr": 1e-12, "optim.warmup_steps": 0, "head_bias": "zero"})))
    model, *_ = load_trained_model(tmp_path / "zero")
    assert model.module.get_classifier().bias.abs().max() < 1e-6 and zero["steps"] == 1


def test_a_run_that_learns_nothing_is_called_collapsed(tmp_path, synth_data, capsys):
    """lr 1e-9 leaves the model at its prior-bias start: the loss is the prior's, the run is flagged
    with its likely causes, and summary.json says so."""
    import json

    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train
    from helpers import base_overrides

    over = base_overrides(synth_data, tmp_path / "run", **{"optim.epochs": 4, "optim.lr": 1e-9,
                                                           "optim.warmup_steps": 0, "augment.time_mask": 0,
                                                           "augment.freq_mask": 0})
    summary = train(load_config(None, over))
    assert summary["health"]["collapsed"]
    assert "training loss at the label prior" in summary["health"]["reasons"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["health"]["collapsed"]
    err = capsys.readouterr().err
    assert "collapsed run" in err and "may be too low" in err
    # A model at its start still gives clips different outputs: not the constant-output collapse.
    health = summary["health"]
    assert health["final_feature_spread"] > SPREAD_DROP * health["start_feature_spread"] > 0
    assert "lost their dependence" not in err


def test_train_warns_when_a_run_left_the_prior_late(tmp_path, synth_data, capsys, monkeypatch):
    """The loop's wiring: a learning run whose monitor says it left the prior late ends with the advice."""
    from dass_distill.training import health as health_module
    from dass_distill.training.config import load_config
    from dass_distill.training.loop import train
    from helpers import base_overrides

    real_report = health_module.CollapseMonitor.report

    def late_report(self, total_steps=None):
        return {**real_report(self, total_steps), "collapsed": False, "reasons": [], "last_step_at_prior": 2,
                "left_prior_late": True}

    monkeypatch.setattr(health_module.CollapseMonitor, "report", late_report)
    over = base_overrides(synth_data, tmp_path / "run", **{"optim.max_steps": 3, "augment.freq_mask": 24})
    summary = train(load_config(None, over))
    err = capsys.readouterr().err
    assert summary["health"]["left_prior_late"] and "late start" in err
    assert "step 2 of 3" in err and "augment.freq_mask=0" in err.replace("\n", "")
