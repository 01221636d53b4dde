"""MetricsLog: the run's metrics.csv (append across instances, truncate on resume) and its
TensorBoard scalars, with and without the tensorboard package."""

from __future__ import annotations

import csv
import sys
import warnings

import pytest

from dass_distill.training import metrics_log
from dass_distill.training.metrics_log import MetricsLog


@pytest.fixture(autouse=True)
def _fresh_event_file_counter(monkeypatch):
    """TensorBoard reads a folder's event files in name order, and a name is
    ``events.out.tfevents.<second>.<host>.<pid>.<n>`` with ``n`` counting writers in the process:
    two files of one second sort wrongly once ``n`` reaches 10. Count from 0 in each test."""
    try:
        from tensorboard.summary.writer import event_file_writer as efw
    except ImportError:
        return
    monkeypatch.setattr(efw, "_global_uid", efw.AtomicCounter(0))


def _rows(run):
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.reader(f))


def _scalars(run):
    """{tag: [(step, value)]} as TensorBoard reads the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_csv_rows_and_header(tmp_path):
    log = MetricsLog(tmp_path / "run", tensorboard=False)
    log.write(1, 1, "train", {"loss": 0.123456789, "lr": 1e-4})
    log.write(2, 1, "eval", {"mAP": 0.5, "eval_errors": 0})
    log.close()
    assert _rows(tmp_path / "run") == [
        ["step", "epoch", "split", "metric", "value"],
        ["1", "1", "train", "loss", "0.123457"],
        ["1", "1", "train", "lr", "0.0001"],
        ["2", "1", "eval", "mAP", "0.5"],
        ["2", "1", "eval", "eval_errors", "0"],
    ]
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_rows_are_flushed_as_written(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write(3, 1, "train", {"loss": 1.0})
    assert _rows(tmp_path)[-1] == ["3", "1", "train", "loss", "1"]  # readable before close (a kill keeps it)
    log.close()


def test_a_second_instance_appends(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.write(1, 1, "train", {"loss": 1.0})
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.write(2, 1, "train", {"loss": 0.5})
    rows = _rows(tmp_path)
    assert rows.count(["step", "epoch", "split", "metric", "value"]) == 1
    assert [r[0] for r in rows[1:]] == ["1", "2"]


def test_an_empty_file_gets_a_header(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.write(1, 1, "train", {"loss": 1.0})
    assert _rows(tmp_path)[0] == ["step", "epoch", "split", "metric", "value"]


def test_truncate_after_drops_later_steps(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 7):
            log.write(step, 1 + step // 4, "train", {"loss": 1 / step})
        log.write(6, 2, "eval", {"mAP": 0.4})
    mode = (tmp_path / "metrics.csv").stat().st_mode
    # resumed from the checkpoint at step 3: rows of steps 4-6 were written after it
    log = MetricsLog(tmp_path, tensorboard=False)
    assert log.truncate_after(3) == 4
    log.write(4, 2, "train", {"loss": 0.3})
    log.close()
    rows = _rows(tmp_path)
    assert rows[0] == ["step", "epoch", "split", "metric", "value"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"] and rows[-1][-1] == "0.3"
    assert (tmp_path / "metrics.csv").stat().st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temporary file left


def test_truncate_after_drops_a_row_torn_by_a_kill(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.write(1, 1, "train", {"loss": 1.0})
        log.write(2, 1, "train", {"loss": 0.5})
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("3,1,tra")  # killed mid-row
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write(3, 1, "train", {"loss": 0.25})  # starts on its own line
    assert _rows(tmp_path)[-2:] == [["3", "1", "tra"], ["3", "1", "train", "loss", "0.25"]]
    assert log.truncate_after(2) == 2
    log.close()
    assert [r[0] for r in _rows(tmp_path)[1:]] == ["1", "2"]


def test_truncate_after_without_a_file_yet(tmp_path):
    log = MetricsLog(tmp_path / "new", tensorboard=False)
    assert log.truncate_after(10) == 0
    log.close()
    assert _rows(tmp_path / "new") == [["step", "epoch", "split", "metric", "value"]]


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_are_readable(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLog(tmp_path) as log:
        assert log.tensorboard
        log.write(1, 1, "train", {"loss": 2.0, "lr": 0.1})
        log.write(2, 1, "train", {"loss": 1.5, "lr": 0.2})
        log.write(2, 1, "eval", {"mAP": 0.25})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(tmp_path)
    assert set(scalars) == {"train/loss", "train/lr", "eval/mAP"}
    assert scalars["train/loss"] == [(1, 2.0), (2, 1.5)]
    assert scalars["eval/mAP"] == [(2, 0.25)]
    assert len(_rows(tmp_path)) == 6  # the CSV is written as well


def test_resume_purges_later_tensorboard_points(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLog(tmp_path) as log:
        for step in range(1, 6):
            log.write(step, 1, "train", {"loss": float(step)})
    log = MetricsLog(tmp_path)  # resumed from step 3
    log.truncate_after(3)
    for step in range(4, 7):
        log.write(step, 1, "train", {"loss": 10.0 * step})
    log.close()
    assert _scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert [r[0] for r in _rows(tmp_path)[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_truncate_while_writing_starts_a_purging_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLog(tmp_path) as log:
        for step in range(1, 5):
            log.write(step, 1, "train", {"loss": float(step)})
        log.truncate_after(2)
        log.write(3, 1, "train", {"loss": 30.0})
    assert _scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_without_tensorboard_warns_once_and_keeps_the_csv(tmp_path, monkeypatch):
    # None in sys.modules makes the import fail as if the package were not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setattr(metrics_log, "_warned_no_tensorboard", False)
    with pytest.warns(RuntimeWarning, match="TensorBoard logging is off"):
        log = MetricsLog(tmp_path / "a")
    assert not log.tensorboard
    log.write(1, 1, "train", {"loss": 1.0})
    assert log.truncate_after(0) == 1
    log.close()
    assert not (tmp_path / "a" / "tensorboard").exists()
    assert len(_rows(tmp_path / "a")) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second log in the same process stays quiet
        MetricsLog(tmp_path / "b").close()


def test_tensorboard_false_does_not_import_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(metrics_log, "_warned_no_tensorboard", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetricsLog(tmp_path, tensorboard=False).close()
