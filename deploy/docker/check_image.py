"""Build-time check of the fringelive image (deploy/docker/Dockerfile): fails the build, naming
every problem, unless the environment has what the GPU backends need.

Checked without a GPU (the build machine may have none): Python >= 3.10; TensorRT 10.x importable;
torch is a CUDA build; onnxruntime offers the CUDA and TensorRT execution providers (compiled-in
providers are listed even with no GPU present); the ``fringelive`` CLI builds its parser and the
installed default bundle validates (files and sha256).

Usage: ``python check_image.py`` → exit 0 and one ``ok`` line, or exit 1 and one line per problem.
"""

from __future__ import annotations

import sys


def problems() -> tuple[list[str], list[str]]:
    """``(problems, facts)``: what is wrong (empty when the image is usable) and what was found."""
    bad: list[str] = []
    facts: list[str] = [f"python {sys.version.split()[0]}"]
    if sys.version_info < (3, 10):
        bad.append(f"python {sys.version.split()[0]} is older than 3.10 (fringelive requires >= 3.10)")
    try:
        import tensorrt

        facts.append(f"tensorrt {tensorrt.__version__}")
        if str(tensorrt.__version__).split(".")[0] != "10":
            bad.append(f"tensorrt {tensorrt.__version__} is not 10.x (export/tensorrt_export.py uses the TensorRT 10 API)")
    except ImportError as e:
        bad.append(f"tensorrt cannot be imported: {e}")
    try:
        import torch

        facts.append(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
        if not torch.version.cuda:
            bad.append(f"torch {torch.__version__} is a CPU build; the GPU backends stage buffers with torch.cuda")
    except ImportError as e:
        bad.append(f"torch cannot be imported: {e}")
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        facts.append(f"onnxruntime {onnxruntime.__version__} {providers}")
        for needed in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            if needed not in providers:
                bad.append(f"onnxruntime {onnxruntime.__version__} lacks {needed} (the CPU package onnxruntime instead of "
                           f"onnxruntime-gpu?); available: {providers}")
    except ImportError as e:
        bad.append(f"onnxruntime cannot be imported: {e}")
    try:
        from fringelive.cli import build_parser
        from fringelive.daemon.config import default_bundle_path
        from fringelive.bundle.bundle_io import load_bundle

        build_parser()
        default = default_bundle_path()
        if default is None:
            bad.append("the default bundle is not installed (package data of fringelive.daemon)")
        else:
            facts.append(f"default bundle {load_bundle(default).name!r}")
    except Exception as e:  # noqa: BLE001 - any failure here makes the image unusable
        bad.append(f"fringelive does not load: {type(e).__name__}: {e}")
    return bad, facts


def main() -> int:
    bad, facts = problems()
    if bad:
        for line in bad:
            print(f"check_image: {line}", file=sys.stderr)
        return 1
    print("check_image: ok: " + "; ".join(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
