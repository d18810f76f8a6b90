"""The published training recipe: cross-entropy, Adam (lr 1e-4), batch 32, best-validation
checkpoint, dihedral + random-rotation augmentation, optional Gaussian-noise augmentation.

Works on in-memory patch arrays: images ``(N, H, W)`` float32 already preprocessed by the shared
engine (``fringelive.engine.preprocess``), labels ``(N, H, W)`` {0, 1}. Device-agnostic torch:
CPU here, CUDA (with AMP: float16 autocast + gradient scaling) where present.

Epochs and randomness. Each epoch's sample order comes from ``DistributedSampler(seed=cfg.seed)``
with ``set_epoch(epoch)`` and the augmentation generator is re-seeded from
``(seed, epoch, rank)``, so an epoch is the same whether the run was resumed or not.

Checkpoints (``checkpoint_dir``): ``last.pt`` after every epoch (model, optimiser, gradient
scaler, torch/CUDA/numpy RNG states, best weights, history, step counts, the config) and
``best.pt`` whenever the validation Dice improves (weights only, plus epoch and score). With
``resume=True`` a run continues after the epoch in ``last.pt``; recipe settings that would change
the result (batch size, learning rate, augmentation, seed, freeze) must match.

Several GPUs (or CPU processes): launched by ``torchrun`` (env ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``), :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU), the
model is wrapped in ``DistributedDataParallel``, each rank takes its ``DistributedSampler`` shard
with ``ceil(batch_size / world_size)`` samples per step (``batch_size`` is the global batch),
BatchNorm running statistics are averaged over the ranks after every epoch, validation is
sharded and its sums all-reduced, and only rank 0 writes checkpoints and logs.

Logs: a CSV row per epoch (``log_csv``) and/or TensorBoard scalars (``tensorboard_dir``; needs the
``tensorboard`` package); a tqdm bar per epoch with ``progress=True``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fringelive.engine.models import UNetSpec
from fringelive.training.augment import gaussian_noise, random_dihedral, random_rotation
from fringelive.training.checkpoints import _atomic_save, _rng_state, _set_rng_state
from fringelive.training.distributed import DistInfo, _average_buffers, init_distributed, resolve_device
from fringelive.training.metrics import hard_dice
from fringelive.training.progress import progress_bar
from fringelive.training.train_logs import _Logs
from fringelive.training.transfer import FREEZE_CHOICES, freeze, set_frozen_eval

__all__ = [
    "TrainConfig",
    "TrainResult",
    "DistInfo",
    "init_distributed",
    "train_model",
    "evaluate_model",
    "resolve_device",
    "config_dict",
    "CHECKPOINT_FORMAT",
    "LR_SCHEDULES",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fringelive-train-checkpoint"
#: Settings that must match when resuming (others, e.g. epochs or logs, may change).
RESUME_KEYS = ("batch_size", "lr", "weight_decay", "dihedral", "rotation_p", "noise_rho", "noise_rho_max",
               "seed", "amp", "freeze", "lr_schedule", "lr_min", "select_metric")
LR_SCHEDULES = ("constant", "cosine")
SELECT_METRICS = ("dice", "pooled_dice", "loss", "last")


@dataclass(frozen=True)
class TrainConfig:
    """Recipe parameters; defaults are the published ones.

    epochs: passes over the training set; batch_size: patches per optimiser step (global, over
    all ranks); lr: Adam learning rate; rotation_p: probability of a random rotation per
    sample; noise_rho / noise_rho_max: fixed or uniform-random ρ of the Gaussian-noise
    augmentation (None = off); noise_lowpass_sigma_px: the low-pass the patches end with (the
    card's ``preprocessing.lowpass_sigma_px``, set by the run), applied to that noise too; max_steps: stop after this many optimiser steps (None = no
    limit); device: "auto" | "cpu" | "cuda" | "cuda:N"; amp: float16 autocast on CUDA;
    freeze: "none" | "encoder" | "decoder" (see :mod:`fringelive.training.transfer`);
    checkpoint_dir: where ``last.pt``/``best.pt`` go (None = none); resume: continue from
    ``checkpoint_dir/last.pt`` when it exists; eval_batch_size: patches per validation call;
    lr_schedule: "constant" (published) | "cosine" (per step from ``lr`` down to ``lr_min``
    over ``epochs`` or ``max_steps``, whichever ends first); select_metric: validation score
    that picks the best checkpoint: "dice" (mean per-patch hard Dice, published),
    "pooled_dice" (one Dice over all validation pixels; steadier when many patches hold no
    particle), "loss" (lowest cross-entropy) or "last" (the final epoch's weights: for a
    schedule that decays to its end, where a small validation set's best epoch is noise).
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    dihedral: bool = True
    rotation_p: float = 0.5
    noise_rho: float | None = None
    noise_rho_max: float | None = None
    noise_lowpass_sigma_px: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    max_steps: int | None = None
    log_csv: str | None = None
    tensorboard_dir: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool = False
    freeze: str = "none"
    eval_batch_size: int = 8
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    select_metric: str = "dice"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.rotation_p <= 1.0:
            raise ValueError(f"rotation_p must be in [0, 1], got {self.rotation_p!r}")
        if self.noise_rho is not None and self.noise_rho_max is not None:
            raise ValueError("give noise_rho or noise_rho_max, not both")
        for name in ("noise_rho", "noise_rho_max"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if not self.noise_lowpass_sigma_px >= 0:
            raise ValueError(f"noise_lowpass_sigma_px must be >= 0 (px), got {self.noise_lowpass_sigma_px!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if self.freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {self.freeze!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"lr_min must be in [0, lr={self.lr}], got {self.lr_min!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume=True needs checkpoint_dir")


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    patches_per_second: float = 0.0  # training steps only (no evaluation), all ranks
    train_seconds: float = 0.0
    resumed_from_epoch: int | None = None
    frozen: list[str] = field(default_factory=list)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    h = hashlib.blake2b(f"{seed}:{epoch}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based)."""
    if cfg.lr_schedule == "constant" or total_steps <= 1:
        return cfg.lr
    t = min(step / (total_steps - 1), 1.0)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t))


def _to_batch(images: np.ndarray, labels: np.ndarray, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).unsqueeze(1)
    y = torch.from_numpy(np.ascontiguousarray(labels[idx])).long()
    return x, y


# --- evaluation ------------------------------------------------------------------------------

_SUM_KEYS = ("loss", "dice", "n", "fp", "fn", "tn", "tp")


@torch.no_grad()
def _eval_sums(model: nn.Module, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, batch_size: int,
               device: torch.device) -> torch.Tensor:
    """float64 sums (loss per sample, Dice per sample, samples, FP, FN, TN, TP pixels)."""

    sums = torch.zeros(len(_SUM_KEYS), dtype=torch.float64)
    for i in range(0, len(indices), batch_size):
        idx = indices[i:i + batch_size]
        x, y = _to_batch(images, labels, idx)
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        per = F.cross_entropy(logits, y, reduction="none").flatten(1).mean(1)
        pred = torch.softmax(logits, 1)[:, 1] > 0.5
        t = y > 0
        sums += torch.tensor([
            float(per.sum()), float(hard_dice(logits, y).sum()), float(len(idx)),
            float((pred & ~t).sum()), float((~pred & t).sum()), float((~pred & ~t).sum()), float((pred & t).sum()),
        ], dtype=torch.float64)
    return sums


def _finish(sums: torch.Tensor) -> dict[str, float]:
    s = dict(zip(_SUM_KEYS, sums.tolist()))
    n = s["n"]
    if n == 0:
        return {"loss": float("nan"), "dice": float("nan")}
    return {
        "loss": s["loss"] / n,
        "dice": s["dice"] / n,
        "false_positive_rate": s["fp"] / max(s["fp"] + s["tn"], 1.0),
        "false_negative_rate": s["fn"] / max(s["fn"] + s["tp"], 1.0),
        "oversegment_fraction": s["fp"] / max(s["fp"] + s["fn"], 1.0),
        "pooled_dice": (2 * s["tp"] + 1.0) / (2 * s["tp"] + s["fp"] + s["fn"] + 1.0),
    }


def evaluate_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 8,
                   device: torch.device | str = "cpu", dist_info: DistInfo | None = None) -> dict[str, float]:
    """Mean cross-entropy and hard Dice (class 1, threshold 0.5) per patch, and pixel error
    rates, on a patch set. In a distributed run each rank evaluates its shard and the sums are
    all-reduced, so every rank returns the same numbers. Leaves the model in eval mode."""
    info = dist_info or DistInfo()
    device = torch.device(device)
    model.eval()
    indices = np.arange(info.rank, len(images), info.world_size)
    sums = _eval_sums(model, images, labels, indices, batch_size, device)
    if info.distributed:
        import torch.distributed as dist

        t = sums.to(device) if dist.get_backend() == "nccl" else sums
        dist.all_reduce(t)
        sums = t.cpu()
    return _finish(sums)


# --- checkpoints -----------------------------------------------------------------------------


def _arch_of(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(spec, "to_dict"):
        return {}

    return {"arch": "resunet-seed" if spec == UNetSpec() else "resunet", "spec": spec.to_dict()}


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def _load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fringelive training checkpoint")
    old = {"lr_schedule": "constant", "lr_min": 0.0, "select_metric": "dice", **ckpt.get("config", {})}
    new = asdict(cfg)
    keys = RESUME_KEYS + (("epochs", "max_steps") if cfg.lr_schedule == "cosine" else ())
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff)
        raise ValueError(f"{path}: cannot resume with a different recipe ({detail})")
    return ckpt


# --- training --------------------------------------------------------------------------------


def train_model(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    benchmarks: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; returns the best-validation-Dice weights and the history, and
    leaves the best weights loaded. benchmarks: named patch sets evaluated every epoch (their
    metrics appear in the history as ``<name>_dice`` etc.)."""
    from torch.utils.data.distributed import DistributedSampler

    x_tr, y_tr = train
    if len(x_tr) == 0:
        raise ValueError("training set is empty")
    if x_tr.shape != y_tr.shape:
        raise ValueError(f"images {x_tr.shape} and labels {y_tr.shape} differ in shape")
    info = DistInfo.current()
    device = resolve_device(cfg.device, info)
    torch.manual_seed(cfg.seed)
    frozen = freeze(model, cfg.freeze)
    model.to(device)
    net: nn.Module = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"freeze={cfg.freeze!r} leaves no parameter to train")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    result = TrainResult(best_state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}),
                         best_epoch=-1, best_val_dice=-math.inf, frozen=frozen)
    start_epoch, steps, seen, seconds_before, train_seconds = 0, 0, 0, 0.0, 0.0
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    if cfg.resume and last_path is not None and last_path.is_file():
        ckpt = _load_checkpoint(last_path, cfg)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt.get("rng", {}))
        result.best_state = ckpt["best_state"]
        result.best_epoch = int(ckpt["best_epoch"])
        result.best_val_dice = float(ckpt["best_score"])
        result.history = list(ckpt["history"])
        steps, seen, seconds_before = int(ckpt["steps"]), int(ckpt["seen"]), float(ckpt["seconds"])
        train_seconds = float(ckpt.get("train_seconds", 0.0))
        start_epoch = int(ckpt["epoch"]) + 1
        result.resumed_from_epoch = int(ckpt["epoch"])
        log.info("resumed from %s after epoch %d (%d steps)", last_path, ckpt["epoch"], steps)
    if ckpt_dir is not None and info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    logs = _Logs(cfg, info.is_main, resuming=start_epoch > 0)
    sampler = DistributedSampler(range(len(x_tr)), num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    per_rank = -(-cfg.batch_size // info.world_size)
    steps_per_epoch = -(-sampler.num_samples // per_rank)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    noise = cfg.noise_rho is not None or cfg.noise_rho_max is not None
    t0 = time.perf_counter()
    done = cfg.max_steps is not None and steps >= cfg.max_steps
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if done:
                break
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
            net.train()
            set_frozen_eval(model, cfg.freeze)
            total = torch.zeros(2, dtype=torch.float64)
            t_epoch = time.perf_counter()
            bar = progress_bar(cfg.progress and info.is_main, -(-len(order) // per_rank), desc=f"epoch {epoch}",
                               unit="step")
            try:
                for i in range(0, len(order), per_rank):
                    idx = order[i:i + per_rank]
                    x, y = _to_batch(x_tr, y_tr, idx)
                    if cfg.dihedral:
                        x, y = random_dihedral(x, y, gen)
                    if cfg.rotation_p > 0:
                        x, y = random_rotation(x, y, gen, cfg.rotation_p)
                    if noise:
                        x = gaussian_noise(x, gen, rho=cfg.noise_rho, rho_max=cfg.noise_rho_max,
                                           lowpass_sigma_px=cfg.noise_lowpass_sigma_px)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    for group in opt.param_groups:
                        group["lr"] = _lr_at(cfg, steps, total_steps)
                    with torch.autocast(device.type, dtype=torch.float16 if use_amp else torch.bfloat16,
                                        enabled=use_amp):
                        loss = F.cross_entropy(net(x), y)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
                    steps += 1
                    seen += len(idx) * info.world_size
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                    if cfg.max_steps is not None and steps >= cfg.max_steps:
                        done = True
                        break
            finally:
                bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds += time.perf_counter() - t_epoch
            if info.distributed:
                import torch.distributed as dist

                t = total.to(device) if dist.get_backend() == "nccl" else total
                dist.all_reduce(t)
                total = t.cpu()
                _average_buffers(model, info.world_size)
            row: dict[str, float] = {"epoch": epoch, "train_loss": float(total[0] / max(total[1], 1)),
                                     "steps": steps}
            if len(val[0]):
                v = evaluate_model(model, *val, batch_size=cfg.eval_batch_size, device=device, dist_info=info)
            else:
                v = {"dice": float("nan"), "loss": float("nan")}
            row.update({f"val_{k}": x for k, x in v.items()})
            for name, (bx, by) in (benchmarks or {}).items():
                b = evaluate_model(model, bx, by, batch_size=cfg.eval_batch_size, device=device, dist_info=info)
                row.update({f"{name}_{k}": x for k, x in b.items()})
            row["seconds"] = seconds_before + time.perf_counter() - t0
            result.history.append(row)
            if cfg.select_metric == "last":
                score = float(epoch)  # every epoch improves: the final weights are kept
            elif math.isnan(v["dice"]):
                score = -row["train_loss"]
            elif cfg.select_metric == "loss":
                score = -v["loss"]
            else:
                score = v[cfg.select_metric]
            improved = score > result.best_val_dice
            if improved:
                result.best_val_dice, result.best_epoch = score, epoch
                result.best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            if info.is_main:
                logs.write(row)
                if ckpt_dir is not None:
                    arch = _arch_of(model)
                    if improved:
                        _atomic_save({"format": CHECKPOINT_FORMAT + "-weights", "model": result.best_state,
                                      "epoch": epoch, "val_dice": score, **arch}, ckpt_dir / "best.pt")
                    _atomic_save({
                        "format": CHECKPOINT_FORMAT, "version": 1, "epoch": epoch, "steps": steps, "seen": seen,
                        "seconds": row["seconds"], "train_seconds": train_seconds,
                        "model": {k: t.detach().cpu() for k, t in model.state_dict().items()},
                        "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                        "best_state": result.best_state, "best_epoch": result.best_epoch,
                        "best_score": result.best_val_dice, "history": result.history,
                        "config": asdict(cfg), "world_size": info.world_size, **arch,
                    }, last_path)  # type: ignore[arg-type]
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={x:.4g}" for k, x in row.items() if k != "epoch"))
            if on_epoch:
                on_epoch(row)
            if info.distributed:
                import torch.distributed as dist

                dist.barrier()
    finally:
        logs.close()
    result.steps = steps
    result.seconds = seconds_before + time.perf_counter() - t0
    result.train_seconds = train_seconds
    result.patches_per_second = seen / train_seconds if train_seconds > 0 else 0.0
    model.load_state_dict(result.best_state)
    return result
