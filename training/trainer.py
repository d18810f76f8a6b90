"""The published training recipe: cross-entropy, Adam (lr 1e-4), batch 32, best-validation
checkpoint, dihedral + random-rotation augmentation, optional Gaussian-noise augmentation.

Works on in-memory patch arrays: images ``(N, H, W)`` float32 already preprocessed by the shared
engine (``fringelive.daemon.preprocess``), labels ``(N, H, W)`` {0, 1}. Device-agnostic torch:
CPU here, CUDA (with AMP) where present.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import gaussian_noise, random_dihedral, random_rotation
from .metrics import error_rates, hard_dice

__all__ = ["TrainConfig", "TrainResult", "train_model", "evaluate_model", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Recipe parameters; defaults are the published ones.

    epochs: passes over the training set; lr: Adam learning rate; rotation_p: probability of a
    random rotation per sample; noise_rho / noise_rho_max: fixed or uniform-random ρ of the
    Gaussian-noise augmentation (None = off); max_steps: stop after this many optimiser steps
    (None = no limit); device: "auto" | "cpu" | "cuda" | "cuda:N".
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    dihedral: bool = True
    rotation_p: float = 0.5
    noise_rho: float | None = None
    noise_rho_max: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    max_steps: int | None = None
    log_csv: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.noise_rho is not None and self.noise_rho_max is not None:
            raise ValueError("give noise_rho or noise_rho_max, not both")


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    patches_per_second: float = 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return d


def _batches(n: int, batch: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch):
        yield order[i:i + batch]


@torch.no_grad()
def evaluate_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 8,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean cross-entropy, hard Dice (class 1, threshold 0.5) and error rates on a patch set."""
    device = torch.device(device)
    model.eval()
    losses, dices, preds, labs = [], [], [], []
    for idx in _batches(len(images), batch_size, None):
        x = torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).unsqueeze(1).to(device)
        y = torch.from_numpy(np.ascontiguousarray(labels[idx])).long().to(device)
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="sum").item() / y[0].numel())
        dices.append(hard_dice(logits, y).cpu())
        preds.append((torch.softmax(logits, 1)[:, 1] > 0.5).cpu())
        labs.append(y.cpu())
    n = max(len(images), 1)
    out = {"loss": float(sum(losses) / n), "dice": float(torch.cat(dices).mean()) if dices else float("nan")}
    if preds:
        out.update(error_rates(torch.cat(preds).float(), torch.cat(labs)))
    return out


def train_model(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    benchmarks: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; returns the best-validation-Dice weights and the history."""
    x_tr, y_tr = train
    if len(x_tr) == 0:
        raise ValueError("training set is empty")
    if x_tr.shape != y_tr.shape:
        raise ValueError(f"images {x_tr.shape} and labels {y_tr.shape} differ in shape")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    best = TrainResult(best_state=copy.deepcopy(model.state_dict()), best_epoch=-1, best_val_dice=-math.inf)
    writer = None
    if cfg.log_csv:
        Path(cfg.log_csv).parent.mkdir(parents=True, exist_ok=True)
        fh = open(cfg.log_csv, "w", newline="")
    steps, seen, t0 = 0, 0, time.perf_counter()
    try:
        for epoch in range(cfg.epochs):
            model.train()
            total, count = 0.0, 0
            for idx in _batches(len(x_tr), cfg.batch_size, rng):
                x = torch.from_numpy(np.ascontiguousarray(x_tr[idx], dtype=np.float32)).unsqueeze(1)
                y = torch.from_numpy(np.ascontiguousarray(y_tr[idx])).long()
                if cfg.dihedral:
                    x, y = random_dihedral(x, y, gen)
                if cfg.rotation_p > 0:
                    x, y = random_rotation(x, y, gen, cfg.rotation_p)
                if cfg.noise_rho is not None or cfg.noise_rho_max is not None:
                    x = gaussian_noise(x, gen, rho=cfg.noise_rho, rho_max=cfg.noise_rho_max)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += loss.item() * len(idx)
                count += len(idx)
                steps += 1
                seen += len(idx)
                if cfg.max_steps is not None and steps >= cfg.max_steps:
                    break
            row: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1), "steps": steps}
            v = evaluate_model(model, *val, device=device) if len(val[0]) else {"dice": float("nan"), "loss": float("nan")}
            row.update({f"val_{k}": x for k, x in v.items()})
            for name, (bx, by) in (benchmarks or {}).items():
                b = evaluate_model(model, bx, by, device=device)
                row.update({f"{name}_{k}": x for k, x in b.items()})
            row["seconds"] = time.perf_counter() - t0
            best.history.append(row)
            score = v["dice"] if not math.isnan(v["dice"]) else -row["train_loss"]
            if score > best.best_val_dice:
                best.best_val_dice, best.best_epoch = score, epoch
                best.best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            if cfg.log_csv:
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow({k: row.get(k) for k in writer.fieldnames})
                fh.flush()
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={x:.4g}" for k, x in row.items() if k != "epoch"))
            if on_epoch:
                on_epoch(row)
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
    finally:
        if cfg.log_csv:
            fh.close()
    best.steps = steps
    best.seconds = time.perf_counter() - t0
    best.patches_per_second = seen / best.seconds if best.seconds > 0 else 0.0
    model.load_state_dict(best.best_state)
    return best


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
