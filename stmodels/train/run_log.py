"""A run's logs: ``config.json``, ``metrics.csv`` (per epoch), ``steps.csv`` (per logged step) and
TensorBoard events when the ``tensorboard`` package is installed.

The CSV files are rewritten whole (atomically) from rows the Trainer keeps in its checkpoint, so
after a resume they hold exactly the rows of the restored state, never duplicates or a torn line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from stmodels._fileio import atomic_write_text

__all__ = ["RunLog", "read_csv"]


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, float | str]]:
    """Rows of a CSV written by :class:`RunLog`, numbers converted to float."""
    rows = []
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            converted = {}
            for key, value in row.items():
                try:
                    converted[key] = float(value)
                except (TypeError, ValueError):
                    converted[key] = value
            rows.append(converted)
    return rows


class RunLog:
    """Writes the files of one run into ``out_dir`` (nothing at all when ``enabled`` is False,
    e.g. on ranks other than 0)."""

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._writer = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._writer = self._open_tensorboard()

    def _open_tensorboard(self):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional: torch raises ImportError (or others) without it
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    @property
    def tensorboard(self) -> bool:
        return self._writer is not None

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.out_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")

    def write_tables(self, epoch_rows: list[dict[str, Any]], step_rows: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if epoch_rows:
            atomic_write_text(self.out_dir / "metrics.csv", _csv_text(epoch_rows))
        if step_rows:
            atomic_write_text(self.out_dir / "steps.csv", _csv_text(step_rows))

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and name not in ("epoch", "step"):
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
