"""A training run's metric log: ``RUN/metrics.csv`` plus TensorBoard scalars in ``RUN/tensorboard/``.

The CSV has one row per (step, metric) with the columns ``step,epoch,split,metric,value``.
It is appended to, so a resumed run continues the same file. Rows written after the last
checkpoint of a killed run are dropped with :meth:`MetricsLog.truncate_after` (called with the
resumed step), so no step appears twice; TensorBoard is told the same through ``purge_step``,
and its readers drop the orphaned points of the earlier event files.

TensorBoard is optional: when the ``tensorboard`` package cannot be imported, a warning is
given once per process and only the CSV is written.
"""

from __future__ import annotations

import csv
import os
import tempfile
import warnings
from pathlib import Path

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
HEADER = ["step", "epoch", "split", "metric", "value"]

_warned_no_tensorboard = False


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or None (warned once) when TensorBoard is missing."""
    global _warned_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard not installed, or too old
        if not _warned_no_tensorboard:
            _warned_no_tensorboard = True
            warnings.warn(f"TensorBoard logging is off ({e}); metrics go to {CSV_NAME} only. "
                          "pip install tensorboard to get it.", RuntimeWarning, stacklevel=3)
        return None
    return SummaryWriter


class MetricsLog:
    """Append-only CSV of (step, epoch, split, metric, value) rows, mirrored as TensorBoard scalars.

    TensorBoard tags are ``split/metric`` with the optimizer step as global step.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / CSV_NAME
        self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR
        self._writer_cls = _summary_writer_class() if tensorboard else None
        self._tb = None  # the SummaryWriter, created on first write
        self._purge_step: int | None = None
        self._f = None
        self._open_csv()

    @property
    def tensorboard(self) -> bool:
        """Whether scalars also go to TensorBoard."""
        return self._writer_cls is not None

    # ------------------------------------------------------------------ CSV
    def _open_csv(self) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # a row cut short by a kill: end it so the next row starts clean
        self._f = self.path.open("a", newline="")
        self._w = csv.writer(self._f)
        if not size:
            self._w.writerow(HEADER)
        elif torn:
            self._f.write("\n")
        self._f.flush()

    def write(self, step: int, epoch: int, split: str, values: dict) -> None:
        """One row per metric in ``values``; flushed at once so a killed run keeps them."""
        for k, v in values.items():
            self._w.writerow([step, epoch, split, k, f"{v:.6g}"])
        self._f.flush()
        tb = self._tensorboard_writer()
        if tb is not None:
            for k, v in values.items():
                tb.add_scalar(f"{split}/{k}", float(v), global_step=step)
            tb.flush()

    def truncate_after(self, step: int) -> int:
        """Drop the rows of steps after ``step`` (and torn rows); returns how many were dropped.

        The CSV is rewritten to a temporary file beside it and moved into place, so a kill
        leaves either the old or the new file. TensorBoard points after ``step`` are purged
        by the next event file (``purge_step``).
        """
        self._f.close()
        dropped = 0
        if self.path.exists():
            with self.path.open(newline="") as f:
                rows = list(csv.reader(f))
            kept = []
            for row in rows[1:] if rows and rows[0] == HEADER else rows:
                try:
                    keep = len(row) == len(HEADER) and int(row[0]) <= step
                except ValueError:
                    keep = False
                if keep:
                    kept.append(row)
                else:
                    dropped += 1
            fd, tmp = tempfile.mkstemp(prefix=f".{CSV_NAME}.", suffix=".tmp", dir=self.run_dir)
            try:
                with os.fdopen(fd, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(HEADER)
                    w.writerows(kept)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, self.path.stat().st_mode & 0o7777)  # mkstemp made it 0600
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._open_csv()
        if self.tensorboard:
            self._purge_step = step + 1
            if self._tb is not None:  # already writing: start a new event file that carries the purge
                self._tb.close()
                self._tb = None
        return dropped

    # ------------------------------------------------------------------ TensorBoard
    def _tensorboard_writer(self):
        if self._writer_cls is None:
            return None
        if self._tb is None:
            self._tb = self._writer_cls(log_dir=str(self.tensorboard_dir), purge_step=self._purge_step)
            self._purge_step = None
        return self._tb

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
