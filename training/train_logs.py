"""Per-epoch training logs: CSV and TensorBoard (the ``train`` extra), written by the main rank."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # annotations only (the run module imports this one)
    from fringelive.training.trainer import TrainConfig

__all__ = []


class _Logs:
    """CSV and TensorBoard epoch logs (rank 0 only); appends when resuming."""

    def __init__(self, cfg: TrainConfig, enabled: bool, resuming: bool) -> None:
        self.csv_path = Path(cfg.log_csv) if (enabled and cfg.log_csv) else None
        self._fh: Any = None
        self._writer: Any = None
        self._tb: Any = None
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            append = resuming and self.csv_path.is_file() and self.csv_path.stat().st_size > 0
            if append:
                with open(self.csv_path, newline="") as fh:
                    header = next(csv.reader(fh), None)
                self._fh = open(self.csv_path, "a", newline="")
                if header:
                    self._writer = csv.DictWriter(self._fh, fieldnames=header, extrasaction="ignore")
            else:
                self._fh = open(self.csv_path, "w", newline="")
        if enabled and cfg.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                self.close()
                raise RuntimeError(f"TensorBoard logs need the tensorboard package (pip install tensorboard): {e}") from None
            self._tb = SummaryWriter(log_dir=cfg.tensorboard_dir)

    def write(self, row: Mapping[str, float]) -> None:
        if self._fh is not None:
            if self._writer is None:
                self._writer = csv.DictWriter(self._fh, fieldnames=list(row), extrasaction="ignore")
                self._writer.writeheader()
            self._writer.writerow({k: row.get(k) for k in self._writer.fieldnames})
            self._fh.flush()
        if self._tb is not None:
            step = int(row["epoch"])
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
