"""ONNX export of residual UNets into a model bundle.

:func:`export_onnx` writes one network as ONNX (opset 17, TorchScript exporter, input ``image``
``(N, 1, H, W)`` float32 and output ``logits`` ``(N, C, H, W)`` with dynamic batch/height/width),
runs ``onnx.checker`` and compares ONNX Runtime (CPU) with torch on random inputs.
:func:`export_bundle` does that for every ensemble member and writes the bundle (card with tile
constraints from the architecture, envelope, preprocessing, provenance and the measured
differences under ``metrics["onnx_export"]``, plus each member's torch ``state_dict``).
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
import platform
import shlex
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fringelive.bundle.bundle_io import Bundle, tile_constraints_for, write_bundle
from fringelive.bundle.card import Architecture, Card, Envelope, Member, Preprocessing, Provenance, Source, utc_now_iso
from fringelive.engine.models import UNetSpec, count_parameters

__all__ = [
    "ONNX_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "export_onnx",
    "check_onnx_against_torch",
    "export_bundle",
    "package_versions",
    "command_line",
]

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Default ONNX Runtime vs torch tolerance: ``max|onnx - torch| <= atol + rtol * max|torch|``.
DEFAULT_TOLERANCE = 1e-4
DEFAULT_RTOL = 1e-5


class ExportError(RuntimeError):
    """An export that failed or did not reproduce the torch network; the message says which."""


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an exported model (and python/platform)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("fringelive", "torch", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def command_line() -> str:
    """This process's command line, shell-quoted (program name shortened to its basename)."""
    argv = list(sys.argv) or ["python"]
    argv[0] = os.path.basename(argv[0])
    return " ".join(shlex.quote(a) for a in argv)


def _spec_of(model: nn.Module) -> Any:
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(spec, "downsampling_factor"):
        raise ExportError(
            f"model {type(model).__name__} has no .spec (UNetSpec); build it with "
            "fringelive.engine.models.build_model")
    return spec


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, opset: int = ONNX_OPSET,
                example_size: int | None = None) -> Path:
    """Write ``model`` (a copy, on CPU, eval mode) as ONNX with dynamic N/H/W axes and check it
    with ``onnx.checker`` (full check). example_size: side (px) of the tracing input (default:
    4 × the downsampling factor)."""
    import onnx

    if opset < 17:
        raise ExportError(f"opset must be >= 17, got {opset}")
    spec = _spec_of(model)
    m = copy.deepcopy(model).cpu().float().eval()
    side = example_size or 4 * spec.downsampling_factor
    x = torch.zeros(1, spec.in_channels, side, side)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            m, (x,), str(path),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                          OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker rejects the export: {e}") from None
    return path


@torch.no_grad()
def check_onnx_against_torch(model: nn.Module, onnx_path: str | os.PathLike[str],
                             sizes: Sequence[int] = (512, 1024), seed: int = 0,
                             atol: float = DEFAULT_TOLERANCE, rtol: float = DEFAULT_RTOL,
                             intra_op_threads: int | None = None) -> dict[str, dict[str, float | bool]]:
    """Compare ONNX Runtime (CPU) with torch on standard-normal inputs ``(1, 1, size, size)``.

    Returns ``{"512x512": {"max_abs_diff", "max_abs_logit", "ok"}, ...}``; ``ok`` when
    ``max|onnx - torch| <= atol + rtol * max|torch|`` (float32 rounding grows with the scale of
    the activations, which the largest logit tracks).
    """
    import onnxruntime as ort

    spec = _spec_of(model)
    m = copy.deepcopy(model).cpu().float().eval()
    opts = ort.SessionOptions()
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float | bool]] = {}
    for s in sizes:
        if s % spec.downsampling_factor:
            raise ExportError(f"check size {s} px is not a multiple of {spec.downsampling_factor}")
        x = torch.randn(1, spec.in_channels, s, s, generator=g)
        ref = m(x).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{onnx_path}: ONNX Runtime output {got.shape} != torch {ref.shape}")
        out[f"{s}x{s}"] = {
            "max_abs_diff": float(np.max(np.abs(got - ref))),
            "max_abs_logit": float(np.max(np.abs(ref))),
            "ok": bool(np.max(np.abs(got - ref)) <= atol + rtol * np.max(np.abs(ref))),
        }
    return out


def export_bundle(
    models: Sequence[nn.Module],
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    arch: str | None = None,
    envelope: Envelope | None = None,
    preprocessing: Preprocessing | None = None,
    classes: Sequence[str] | None = None,
    sources: Sequence[Source] = (),
    member_sources: Sequence[str | None] | None = None,
    description: str | None = None,
    metrics: dict[str, Any] | None = None,
    drift_reference: dict[str, Any] | None = None,
    command: str | None = None,
    notes: str | None = None,
    check_sizes: Sequence[int] = (512, 1024),
    tolerance: float = DEFAULT_TOLERANCE,
    rtol: float = DEFAULT_RTOL,
    opset: int = ONNX_OPSET,
    save_weights: bool = True,
    overwrite: bool = False,
) -> Bundle:
    """Export an ensemble of residual UNets (same architecture) as a bundle in ``out_dir``.

    models: ``ResUNet`` networks (``.spec`` set), any device; exported from CPU copies in eval mode.
    arch: registry name for the card (default: ``resunet-seed`` when the spec is the seed
        network's, else ``resunet``).
    check_sizes: sides (px) of the standard-normal inputs on which ONNX Runtime must match torch:
        max abs logit difference <= ``tolerance + rtol * max|torch logit|`` (the absolute 1e-4
        dominates for trained networks, whose logits are O(10)); the differences go to
        ``card.metrics["onnx_export"]``.
    member_sources: per member, where its weights came from (e.g. the checkpoint file name).
    command: the command line for the provenance (default: this process's).
    save_weights: also store each member's ``state_dict`` as ``member<i>.pt``.
    Raises :class:`ExportError` when a member exceeds the tolerance; nothing is written then.
    """

    models = list(models)
    if not models:
        raise ExportError("export_bundle needs at least one model")
    specs = [_spec_of(m) for m in models]
    if any(s != specs[0] for s in specs[1:]):
        raise ExportError(f"ensemble members have different architectures: {[s.to_dict() for s in specs]}")
    spec = specs[0]
    if member_sources is not None and len(member_sources) != len(models):
        raise ExportError(f"{len(member_sources)} member_sources for {len(models)} models")
    if not tolerance > 0:
        raise ExportError(f"tolerance must be > 0, got {tolerance!r}")
    if not rtol >= 0:
        raise ExportError(f"rtol must be >= 0, got {rtol!r}")
    arch_name = arch or ("resunet-seed" if spec == UNetSpec() else "resunet")
    n_classes = spec.num_classes
    classes = tuple(classes) if classes is not None else (
        ("background", "particle") if n_classes == 2 else tuple(f"class{i}" for i in range(n_classes)))
    if len(classes) != n_classes:
        raise ExportError(f"{len(classes)} class names for a network with {n_classes} outputs")

    diffs: dict[str, dict[str, float]] = {}
    scales: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fringelive-export-") as tmp:
        onnx_files, weight_files = [], []
        for i, m in enumerate(models):
            f = export_onnx(m, Path(tmp) / f"member{i}.onnx", opset=opset)
            checks = check_onnx_against_torch(m, f, check_sizes, atol=tolerance, rtol=rtol) if check_sizes else {}
            diffs[f"member{i}"] = {k: float(c["max_abs_diff"]) for k, c in checks.items()}
            scales[f"member{i}"] = {k: float(c["max_abs_logit"]) for k, c in checks.items()}
            bad = {k: c for k, c in checks.items() if not c["ok"]}
            if bad:
                detail = ", ".join(f"{k}: max abs diff {c['max_abs_diff']:.3g}" for k, c in bad.items())
                raise ExportError(f"member {i}: ONNX Runtime differs from torch by more than "
                                  f"{tolerance:g} + {rtol:g}*max|logit| ({detail})")
            onnx_files.append(f)
            if save_weights:
                w = Path(tmp) / f"member{i}.pt"
                torch.save({k: v.detach().cpu() for k, v in m.state_dict().items()}, w)
                weight_files.append(w)
        all_metrics = dict(metrics or {})
        all_metrics["onnx_export"] = {
            "check": "ONNX Runtime CPU vs torch on standard-normal inputs; pass: max|onnx - torch| <= tolerance + rtol*max|torch|",
            "input_px": [[s, s] for s in check_sizes],
            "tolerance": tolerance,
            "rtol": rtol,
            "max_abs_diff": diffs,
            "max_abs_logit": scales,
        }
        card = Card(
            name=name,
            architecture=Architecture(name=arch_name, spec=spec.to_dict(), parameters=count_parameters(models[0])),
            tile=tile_constraints_for(spec),
            members=tuple(
                Member(file=f"member{i}.onnx", sha256="", source=(member_sources[i] if member_sources else None))
                for i in range(len(models))),
            provenance=Provenance(
                created=utc_now_iso(), sources=tuple(sources), versions=package_versions(),
                command=command if command is not None else command_line(),
                notes=notes if notes is not None else f"ONNX opset {opset}, TorchScript exporter, dynamic N/H/W",
            ),
            preprocessing=preprocessing or Preprocessing(),
            envelope=envelope or Envelope(),
            classes=classes,
            drift_reference=drift_reference,
            metrics=all_metrics,
            description=description,
        )
        bundle = write_bundle(out_dir, card, onnx_files, overwrite=overwrite,
                              weight_files=weight_files if save_weights else None)
    log.info("wrote bundle %s (%d members, max ONNX-torch diff %.2e)", bundle.path, len(models),
             max((v for d in diffs.values() for v in d.values()), default=0.0))
    return bundle
