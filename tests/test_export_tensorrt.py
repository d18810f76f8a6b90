"""TensorRT export: one clear line and exit code 2 without TensorRT/GPU; the real build where possible."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fringelive.bundle.bundle_io import Bundle, load_bundle
from fringelive.export.tensorrt_export import (
    DEFAULT_TOLERANCES,
    EngineProfile,
    TensorRTUnavailable,
    build_engines,
    engine_profile,
    require_tensorrt,
)


def _gpu_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


HAVE_TRT = _gpu_tensorrt()
# the `fringelive` console script, run with this interpreter
FRINGELIVE = [sys.executable, "-c", "import sys; from fringelive.cli import main; sys.exit(main())"]


def test_engine_profile() -> None:
    p = engine_profile(768, 4, multiple_of=16, min_size=16)
    assert p == EngineProfile(min=(1, 1, 16, 16), opt=(4, 1, 768, 768), max=(4, 1, 768, 768))
    assert p.to_dict() == {"min": [1, 1, 16, 16], "opt": [4, 1, 768, 768], "max": [4, 1, 768, 768]}
    with pytest.raises(ValueError, match="tile_size must be a multiple of 16 and >= 16 px, got 100"):
        engine_profile(100, 4, 16, 16)
    with pytest.raises(ValueError, match="max_batch must be a positive integer, got 0"):
        engine_profile(512, 0, 16, 16)
    assert DEFAULT_TOLERANCES["fp16"] == (5e-2, 0.999)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are present")
def test_require_tensorrt_says_what_is_missing() -> None:
    with pytest.raises(TensorRTUnavailable) as info:
        require_tensorrt()
    msg = str(info.value)
    assert "\n" not in msg and ("TensorRT" in msg or "CUDA" in msg)


def test_bad_arguments_are_checked_before_tensorrt(tiny_bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        build_engines(tiny_bundle.path, precision="int4")
    with pytest.raises(ValueError, match="tile_size must be a multiple of 16"):
        build_engines(tiny_bundle.path, tile_size=500)
    with pytest.raises(ValueError, match="member index 3 out of range"):
        build_engines(tiny_bundle.path, members=[3])


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are present")
def test_cli_without_tensorrt_exits_2_with_one_line(tiny_bundle: Bundle) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [*FRINGELIVE, "export", "tensorrt", "--bundle", str(tiny_bundle.path),
         "--precision", "fp16", "--tile-size", "256", "--max-batch", "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fringelive: error: ") and ("TensorRT" in lines[0] or "CUDA" in lines[0])
    assert r.stdout == ""
    assert load_bundle(tiny_bundle.path).card.engines == ()


def test_cli_bad_bundle_is_a_runtime_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [*FRINGELIVE, "export", "tensorrt", "--bundle", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"fringelive: error: bundle {tmp_path / 'none'}: not a directory"]


@pytest.mark.skipif(not HAVE_TRT, reason="needs the tensorrt package and a CUDA GPU")
def test_build_fp16_engine(tiny_bundle: Bundle, tmp_path: Path) -> None:
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, dst)
    b = build_engines(dst, precision="fp16", tile_size=256, max_batch=2)
    (e,) = b.card.engines
    assert e.member == "member0.onnx" and e.precision == "fp16"
    assert e.profile == {"min": [1, 1, 16, 16], "opt": [2, 1, 256, 256], "max": [2, 1, 256, 256]}
    assert e.max_abs_diff_vs_onnxruntime <= e.tolerance == 5e-2
    assert e.argmax_agreement >= e.min_argmax_agreement == 0.999
    assert load_bundle(dst).card.engines == b.card.engines
    # rebuilding replaces the engine entry instead of adding a second one
    assert len(build_engines(dst, precision="fp16", tile_size=256, max_batch=2).card.engines) == 1
