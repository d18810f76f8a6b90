"""Shared pytest fixtures.

``tiny_bundle``: a session-wide 1-member bundle of a randomly initialised ``resunet-seed``
(``torch.manual_seed(0)``), exported to ONNX with its torch weights (``member0.pt``).
``seed_models_dir``: ``../shared/seed_models`` (the 50 published checkpoints); skips when absent.
``one_torch_thread``: torch single-threaded for a module (``pytestmark =
pytest.mark.usefixtures("one_torch_thread")``).
``default_bundle_and_labelled``: a writable copy of the default bundle and 3 labelled frames
(``calibrate --choose-*`` tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

SEED_MODELS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed_models"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch with one intra-op thread for the module, restored afterwards: on a shared,
    oversubscribed CI box every parallel region waits for descheduled peer threads (10-40x
    slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def seed_models_dir() -> Path:
    """Directory of the published checkpoints (``*.h5``, ``model_details.csv``)."""
    if not SEED_MODELS_DIR.is_dir() or not any(SEED_MODELS_DIR.glob("*.h5")):
        pytest.skip(f"published checkpoints not available: {SEED_MODELS_DIR} is absent or holds no .h5")
    return SEED_MODELS_DIR


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A loaded :class:`fringelive.bundle.bundle_io.Bundle`: 1 member, random resunet-seed weights
    (seed 0, eval mode), ONNX + ``member0.pt``; envelope Au, 5 nm, 0.02 nm/px, 423 e/Å², 300 kV."""
    import torch

    from fringelive.bundle.card import Envelope, Range
    from fringelive.export.onnx_export import export_bundle
    from fringelive.engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resunet-seed").eval()
    envelope = Envelope(
        material=("Au",),
        particle_diameter_nm=Range(5.0, 5.0),
        pixel_size_nm=Range(0.02, 0.02),
        dose_e_per_A2=Range(423.0, 423.0),
        voltage_kv=Range(300.0, 300.0),
        support=("UT Carbon",),
    )
    out = tmp_path_factory.mktemp("tiny_bundle") / "tiny-resunet-seed"
    return export_bundle(
        [model],
        out,
        name="tiny-resunet-seed",
        envelope=envelope,
        description="random weights (torch.manual_seed(0)); for tests only",
        check_sizes=(64,),
    )


@pytest.fixture()
def default_bundle_and_labelled(tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of the installed default bundle (``tmp_path/b``) and 3 labelled raw
    frames to choose its card values on (``tmp_path/lab``: fast simulator, 256², 0.05 nm/px,
    3-5 nm particles, seed 4)."""
    import shutil

    from fringelive.training.synth import synthesize
    from fringelive.training.synth_config import SynthConfig

    bundle = tmp_path / "b"
    shutil.copytree(Path(__file__).resolve().parents[1] / "default_bundle", bundle,
                    ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    labelled = tmp_path / "lab"
    synthesize(SynthConfig(engine="fast", count=3, size_px=256, pixel_size_nm=(0.05, 0.05), diameter_nm=(3.0, 5.0),
                           seed=4), labelled, progress=False)
    return bundle, labelled
