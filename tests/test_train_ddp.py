"""Distributed training on CPU: two gloo processes (as ``torchrun`` would start them) train one
DistributedDataParallel model; both end with the same weights and history and only rank 0
writes checkpoints and logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disc_data import discs  # tests/disc_data.py

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from fringelive.engine.models import build_model
    from fringelive.training.trainer import DistInfo, init_distributed, train_model, TrainConfig

    info = init_distributed()
    assert info == DistInfo(rank, world, rank) and dist.get_backend() == "gloo"
    x, y = discs(11, 32, 0)
    torch.manual_seed(0)
    model = build_model("resunet", widths=(4, 8), bottleneck=8)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, device="cpu", checkpoint_dir=os.path.join(out, "ckpt"),
                      log_csv=os.path.join(out, "ckpt", "log.csv"))
    result = train_model(model, (x[:8], y[:8]), (x[8:], y[8:]), cfg)
    torch.save({"state": model.state_dict(), "history": result.history, "steps": result.steps},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_train_one_model(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert r0["history"] == [{**h, "seconds": r0["history"][i]["seconds"]} for i, h in enumerate(r1["history"])]
    # 8 training samples, 4 per rank per epoch, 2 per rank per step (global batch 4): 2 steps/epoch
    assert r0["steps"] == 4 and [h["steps"] for h in r0["history"]] == [2, 4]
    lines = (tmp_path / "ckpt" / "log.csv").read_text().strip().splitlines()
    assert len(lines) == 3  # header + 2 epochs, written by rank 0 only
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["epoch"] == 1


@pytest.mark.slow
def test_torchrun_cli_train_on_cpu(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m fringelive.cli train ...`` end to end."""
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.training.synth import synthesize
    from fringelive.training.synth_config import SynthConfig

    synthesize(SynthConfig(engine="fast", count=10, size_px=64, pixel_size_nm=(0.1, 0.1), diameter_nm=(2.0, 3.0),
                           particles_per_100nm2=8.0), tmp_path / "syn", progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "fringelive.cli", "train", "--data", str(tmp_path / "syn"), "--out", str(tmp_path / "run"),
           "--arch", "resunet", "--spec", '{"widths": [4, 8], "bottleneck": 8}', "--patch", "32", "--epochs", "2",
           "--batch-size", "8", "--folds", "5", "--fold", "0", "--check-size", "32", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test Dice") == 2  # fold line + bundle line, from rank 0 only
    card = load_bundle(tmp_path / "run" / "bundle").card
    assert len(card.members) == 1 and card.metrics["training"]["fold_runs"][0]["steps"] == 8  # 28 patches, 14 per rank, 4 per step
