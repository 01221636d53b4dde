"""Tagging metrics against scikit-learn / scipy on edge cases (ties, classes without positives or
negatives, constant scores), the per-class records behind ``evaluate``, and the command's outputs.
``test_losses_metrics.py`` covers the plain random case."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from dass_distill.evaluation import best_and_worst, per_class_csv, per_class_records
from dass_distill.metrics import average_precision, d_prime, roc_auc, tagging_metrics

from helpers import cli


def _edge_data():
    """(scores, targets) of 9 classes over 200 clips, with:
    0-3 random with heavy ties (scores on a 0.1 grid); 4 one positive; 5 no positive;
    6 only positives; 7 constant scores; 8 perfectly separated."""
    rng = np.random.default_rng(42)
    n, c = 200, 9
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    s = np.round(rng.random((n, c)) + 0.3 * y, 1).astype(np.float32)  # a 0.1 grid: many ties, also across labels
    y[:, 4] = 0
    y[17, 4] = 1
    y[:, 5] = 0
    y[:, 6] = 1
    s[:, 7] = 0.5
    s[:, 8] = y[:, 8] * 0.5 + 0.25
    return s, y


def test_per_class_ap_and_auc_match_sklearn_on_edge_cases():
    from sklearn.metrics import average_precision_score, roc_auc_score

    s, y = _edge_data()
    ap, auc = average_precision(s, y), roc_auc(s, y)
    for c in range(s.shape[1]):
        if y[:, c].any():
            assert ap[c] == pytest.approx(average_precision_score(y[:, c], s[:, c]), abs=1e-12), c
        else:
            assert math.isnan(ap[c])
        if 0 < y[:, c].sum() < len(y):
            assert auc[c] == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-12), c
        else:
            assert math.isnan(auc[c])
    assert ap[6] == 1.0 and ap[8] == 1.0 and auc[8] == 1.0  # all positive; perfectly separated
    assert auc[7] == 0.5  # constant scores: one threshold, the diagonal
    assert ap[7] == pytest.approx(y[:, 7].mean())  # ...and precision is the prevalence


def test_ties_count_as_one_threshold():
    # four clips tied at 0.5 (two positive), one positive above: sklearn steps once through the tie
    s = np.array([[0.9], [0.5], [0.5], [0.5], [0.5], [0.1]])
    y = np.array([[1], [1], [0], [1], [0], [0]])
    assert average_precision(s, y)[0] == pytest.approx(1 / 3 * 1.0 + 2 / 3 * 3 / 5)
    # AUC: pairs (pos, neg) = 3 x 3; the positive at 0.9 beats all; each tied positive beats 0.1 and ties 2
    assert roc_auc(s, y)[0] == pytest.approx((3 + 2 * (1 + 0.5 * 2)) / 9)


def test_tagging_metrics_skip_undefined_classes():
    s, y = _edge_data()
    m = tagging_metrics(s, y)
    ap, auc = np.array(m["per_class_ap"]), np.array(m["per_class_auc"])
    defined_ap = [c for c in range(9) if c != 5]
    defined_auc = [c for c in range(9) if c not in (5, 6)]
    assert np.isnan(ap[5]) and np.isnan(auc[5]) and np.isnan(auc[6]) and not np.isnan(ap[6])
    assert m["mAP"] == pytest.approx(ap[defined_ap].mean(), abs=1e-12)
    assert m["mAUC"] == pytest.approx(auc[defined_auc].mean(), abs=1e-12)
    assert m["positives"] == [int(v) for v in y.sum(axis=0)]
    assert m["positives"][4] == 1 and m["positives"][5] == 0 and m["positives"][6] == 200
    assert m["d_prime"] == pytest.approx(math.sqrt(2) * _norm_ppf(m["mAUC"]), abs=1e-9)


def test_tagging_metrics_without_any_positive_are_nan():
    m = tagging_metrics(np.random.default_rng(0).random((5, 3)), np.zeros((5, 3)))
    assert math.isnan(m["mAP"]) and math.isnan(m["mAUC"]) and math.isnan(m["d_prime"])
    assert m["positives"] == [0, 0, 0]


def test_tagging_metrics_accept_soft_targets_and_half_precision_scores():
    # targets above 0.5 count as positive (label smoothing leaves 0.9 / 0.1)
    s, y = _edge_data()
    soft = np.where(y > 0.5, 0.9, 0.1)
    a, b = tagging_metrics(s, y), tagging_metrics(s.astype(np.float16), soft)
    assert a["mAP"] == pytest.approx(b["mAP"]) and a["positives"] == b["positives"]


@pytest.mark.parametrize("auc", [0.01, 0.3, 0.5, 0.75, 0.9, 0.999])
def test_d_prime_matches_scipy(auc):
    assert d_prime(auc) == pytest.approx(math.sqrt(2) * _norm_ppf(auc), rel=1e-9, abs=1e-12)


def test_d_prime_limits():
    assert d_prime(1.0) == math.inf and d_prime(0.0) == -math.inf
    assert d_prime(0.25) == pytest.approx(-d_prime(0.75))


def _norm_ppf(p: float) -> float:
    """Phi^-1 via scipy when installed, else by bisection on erf (no shared code with the metric)."""
    try:
        from scipy.stats import norm
    except ImportError:
        lo, hi = -40.0, 40.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
        return (lo + hi) / 2
    return float(norm.ppf(p))


# --------------------------------------------------------------------------- per-class records


def _records():
    s, y = _edge_data()
    ids = [f"/m/{c:02d}" for c in range(9)]
    names = [f"class {c}" for c in range(9)]
    return per_class_records(ids, names, tagging_metrics(s, y))


def test_per_class_records_follow_label_map_order():
    s, y = _edge_data()
    recs = _records()
    assert [r["index"] for r in recs] == list(range(9))
    assert recs[3]["label_id"] == "/m/03" and recs[3]["label"] == "class 3"
    assert recs[3]["ap"] == pytest.approx(average_precision(s, y)[3])
    assert recs[3]["positives"] == int(y[:, 3].sum())


def test_best_and_worst_leave_out_classes_without_ap():
    recs = _records()
    best, worst = best_and_worst(recs, 3)
    aps = sorted((r["ap"] for r in recs if not math.isnan(r["ap"])), reverse=True)
    assert [r["ap"] for r in best] == aps[:3] and [r["ap"] for r in worst] == aps[::-1][:3]
    assert best[0]["index"] == 6  # ties (6 and 8 both 1.0) keep label-map order
    everything, _ = best_and_worst(recs, 100)
    assert len(everything) == 8 and all(r["index"] != 5 for r in everything)
    assert best_and_worst(recs, 0) == ([], [])


def test_per_class_csv_has_empty_cells_for_undefined_values():
    rows = list(csv.DictReader(io.StringIO(per_class_csv(_records()))))
    assert list(rows[0]) == ["index", "label_id", "label", "positives", "ap", "auc"]
    assert len(rows) == 9
    assert rows[5]["ap"] == "" and rows[5]["auc"] == "" and rows[5]["positives"] == "0"
    assert rows[6]["auc"] == "" and float(rows[6]["ap"]) == 1.0


# --------------------------------------------------------------------------- the evaluate command


def test_evaluate_command_reports_overall_and_per_class(student_dir, synth_data, tmp_path):
    out, pc = tmp_path / "eval.json", tmp_path / "per_class.csv"
    proc = cli("evaluate", student_dir, "--data", synth_data["eval_manifest"], "--output", out,
               "--per-class-csv", pc, "--top", 2)
    result = json.loads(out.read_text())
    # the keys earlier versions wrote are still there
    for key in ("mAP", "mAUC", "d_prime", "per_class_ap", "clips", "errors", "label_names"):
        assert key in result, key
    assert result["clips"] == 12 and len(result["per_class"]) == 12 == len(result["label_ids"])
    aps = [r["ap"] for r in result["per_class"]]
    np.testing.assert_allclose(aps, result["per_class_ap"])
    assert result["mAP"] == pytest.approx(np.nanmean(aps))
    assert result["d_prime"] == pytest.approx(math.sqrt(2) * _norm_ppf(result["mAUC"]), abs=1e-9)
    assert sum(r["positives"] for r in result["per_class"]) > 0

    rows = list(csv.DictReader(pc.open()))
    assert [r["label_id"] for r in rows] == result["label_ids"]
    assert [r["label"] for r in rows] == result["label_names"]

    text = proc.stderr
    for word in ("mAP", "mAUC", "d-prime", "best 2 classes by AP", "worst 2 classes by AP"):
        assert word in text, word
    best, worst = best_and_worst(result["per_class"], 2)
    for r in best + worst:
        assert r["label"] in text and r["label_id"] in text

    # --top covering every class: one ranked table
    proc = cli("evaluate", student_dir, "--data", synth_data["eval_manifest"], "--top", 6)
    assert "all 12 classes by AP" in proc.stderr and "best 6" not in proc.stderr
