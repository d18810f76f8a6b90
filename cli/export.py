"""Subcommands ``import-seed`` and ``export onnx|tensorrt|triton|openvino``.

    fringelive import-seed ../shared/seed_models/*.h5 --out bundles/
    fringelive export onnx --checkpoint model.pt --out bundles/mine --material Au --pixel-size-nm 0.02
    fringelive export tensorrt --bundle bundles/au-5nm-0.020nm-423e --precision fp16 --tile-size 768
    fringelive export triton --bundle bundles/au-5nm-0.020nm-423e --out /srv/triton-models --kind gpu

Heavy imports (torch, onnx, tensorrt) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fringelive.bundle.bundle_io import BundleError, sha256_file
from fringelive.bundle.card import CardError, Envelope, Preprocessing, Range, Source
from fringelive.cli import CLIError, summary
from fringelive.cli.preprocessing import add_preprocessing_options, preprocessing_from_args
from fringelive.engine.models import build_model
from fringelive.export.onnx_export import ExportError, command_line, export_bundle
from fringelive.export.safe_unpickle import UnpicklingRefused
from fringelive.export.seed_import import (SEED_PREPROCESSING, SeedImportError, check_parity, import_seed,
                                           load_seed_checkpoint, to_resunet)
from fringelive.export.tensorrt_export import EngineBuildError, TensorRTUnavailable, build_engines
from fringelive.export.triton_export import TritonExportError, export_triton

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _register_import_seed(sub)
    export = sub.add_parser("export", help=summary("export"),
                            description="Export networks as model bundles, and bundles as TensorRT engines or "
                            "NVIDIA Triton Inference Server model repositories.")
    esub = export.add_subparsers(dest="export_command", metavar="FORMAT")
    _register_onnx(esub)
    _register_tensorrt(esub)
    _register_triton(esub)
    _register_openvino(esub)
    export.set_defaults(func=lambda args: _usage(export))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


_APPEND_OPTIONS = {"checkpoint", "check_size"}
_POSITIONAL = {"files"}
_NOT_OPTIONS = {"func", "command", "export_command", "log_level"}


def _command_line(args: argparse.Namespace, head: str) -> str:
    """The command for the card's provenance: this process's argv when run as ``fringelive``,
    else (``main(argv)`` called in-process) rebuilt from the parsed arguments."""
    import shlex


    if Path(sys.argv[0]).name == "fringelive":
        return command_line()
    words = ["fringelive", *head.split()]
    for key, v in vars(args).items():
        if key in _NOT_OPTIONS or v is None or v is False:
            continue
        opt = "--" + key.replace("_", "-")
        if key in _POSITIONAL:
            words += [str(x) for x in v]
        elif v is True:
            words.append(opt)
        elif key in _APPEND_OPTIONS:
            for x in v:
                words += [opt, str(x)]
        elif isinstance(v, list):
            words += [opt, *map(str, v)]
        else:
            words += [opt, str(v)]
    return " ".join(shlex.quote(w) for w in words)


# --- import-seed ------------------------------------------------------------------------

def _register_import_seed(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "import-seed", help=summary("import-seed"),
        description="Load published checkpoints through a restricted unpickler, verify resunet-seed "
        "reproduces them, and write one bundle per training dataset (folds = ensemble members) "
        "named <material>-<diameter>nm-<pixel size>nm-<dose>e.")
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="published checkpoint files")
    p.add_argument("--out", required=True, metavar="DIR", help="directory that receives one bundle per dataset")
    p.add_argument("--details", metavar="CSV", help="model_details.csv (default: the one beside the first FILE)")
    p.add_argument("--metadata", metavar="CSV",
                   help="Dataset_metadata.csv for the support film (default: beside the first FILE; optional)")
    p.add_argument("--parity-size", type=int, default=256, metavar="PX",
                   help="side of the random input for the checkpoint-vs-resunet-seed check, px (default: 256)")
    p.add_argument("--check-size", type=int, action="append", metavar="PX",
                   help="side of a random input for the ONNX Runtime vs torch check, px; repeatable "
                   "(default: 512 and 1024)")
    p.add_argument("--force", action="store_true", help="overwrite existing bundle directories")
    p.set_defaults(func=_cmd_import_seed)


def _cmd_import_seed(args: argparse.Namespace) -> int:
    _check_size("--parity-size", args.parity_size)
    sizes = tuple(args.check_size or (512, 1024))
    for s in sizes:
        _check_size("--check-size", s)
    try:
        bundles = import_seed(args.files, args.out, details=args.details, metadata=args.metadata,
                              parity_size=args.parity_size, check_sizes=sizes, overwrite=args.force,
                              command=_command_line(args, "import-seed"), progress=print)
    except (SeedImportError, UnpicklingRefused, ExportError, BundleError) as e:
        raise CLIError(str(e)) from None
    print(f"{len(bundles)} bundle(s) written to {args.out}")
    return 0


def _check_size(option: str, v: int) -> None:
    if v < 16 or v % 16:
        raise CLIError(f"{option} must be a positive multiple of 16 px, got {v}", 2)


# --- export onnx --------------------------------------------------------------------------

def _register_onnx(esub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = esub.add_parser(
        "onnx", help="export torch checkpoints (.pt state dicts or published .h5) as an ONNX bundle",
        description="Export one or more checkpoints (an ensemble) as a bundle: ONNX opset 17 with "
        "dynamic batch/height/width, checked against torch with ONNX Runtime.")
    p.add_argument("--checkpoint", action="append", required=True, metavar="FILE",
                   help="torch state_dict (.pt) of a registry model, or a published .h5; repeat for an ensemble")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--arch", default="resunet-seed", metavar="NAME",
                   help="registry model of the .pt state dicts (default: resunet-seed)")
    p.add_argument("--spec", metavar="JSON",
                   help='UNetSpec overrides for --arch as JSON, e.g. \'{"widths": [8, 16, 32], "bottleneck": 64}\' '
                   "(widths in channels)")
    p.add_argument("--name", help="bundle name (default: the output directory's name)")
    p.add_argument("--description", help="free text for the card")
    p.add_argument("--material", nargs="+", metavar="M", help="particle material(s) of the training data, e.g. Au")
    p.add_argument("--support", nargs="+", metavar="S", help="support film(s) of the training data, e.g. 'UT Carbon'")
    p.add_argument("--particle-diameter-nm", nargs="+", type=float, metavar="NM",
                   help="training particle diameter, nm: one value or MIN MAX")
    p.add_argument("--pixel-size-nm", nargs="+", type=float, metavar="NM",
                   help="training pixel size, nm/pixel: one value or MIN MAX")
    p.add_argument("--dose", nargs="+", type=float, metavar="E_PER_A2",
                   help="training electron dose, e/Å²: one value or MIN MAX")
    p.add_argument("--voltage-kv", nargs="+", type=float, metavar="KV",
                   help="acceleration voltage, kV: one value or MIN MAX")
    add_preprocessing_options(p, "recorded in the card; .h5 checkpoints start from the published values")
    p.add_argument("--check-size", type=int, action="append", metavar="PX",
                   help="side of a random input for the ONNX Runtime vs torch check, px; repeatable "
                   "(default: 512 and 1024)")
    p.add_argument("--tolerance", type=float, default=1e-4, metavar="LOGIT",
                   help="absolute tolerance ONNX Runtime vs torch, logit units (default: 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-5, metavar="FRACTION",
                   help="relative tolerance added to --tolerance, fraction of the largest |logit| (default: 1e-5)")
    p.add_argument("--force", action="store_true", help="overwrite an existing bundle directory")
    p.set_defaults(func=_cmd_export_onnx)


def _range(option: str, values: list[float] | None) -> Any:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise CLIError(f"{option} takes one value or MIN MAX, got {len(values)} values", 2)
    lo, hi = values[0], values[-1]
    try:
        return Range(lo, hi)
    except CardError as e:
        raise CLIError(f"{option}: {e}", 2) from None


def _load_checkpoint(path: Path, arch: str, spec_overrides: dict[str, Any]) -> tuple[Any, str]:
    """A network from a .pt state dict or a published .h5; returns (model, source label)."""
    import torch


    if not path.is_file():
        raise CLIError(f"checkpoint {path}: no such file")
    if path.suffix.lower() == ".h5":
        seed = load_seed_checkpoint(path)
        model = to_resunet(seed, path.name)
        diff = check_parity(seed, model, size=256)
        if not diff <= 1e-5:
            raise CLIError(f"checkpoint {path.name}: resunet-seed differs from it by {diff:.3g} (max abs logit)")
        return model, path.name
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        raise CLIError(f"checkpoint {path}: not a torch state_dict file: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"checkpoint {path}: expected a state_dict (name -> tensor), got {type(state).__name__}")
    try:
        model = build_model(arch, **spec_overrides)
    except (ValueError, TypeError) as e:
        raise CLIError(f"--arch/--spec: {e}", 2) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CLIError(f"checkpoint {path}: does not fit {arch}: {' '.join(str(e).split())[:400]}") from None
    return model.eval(), path.name


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    sizes = tuple(args.check_size or (512, 1024))
    for s in sizes:
        _check_size("--check-size", s)
    if not args.tolerance > 0:
        raise CLIError(f"--tolerance must be > 0, got {args.tolerance}", 2)
    if not args.rtol >= 0:
        raise CLIError(f"--rtol must be >= 0, got {args.rtol}", 2)
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as e:
            raise CLIError(f"--spec is not valid JSON: {e}", 2) from None
        if not isinstance(spec, dict):
            raise CLIError(f"--spec must be a JSON object, got {args.spec!r}", 2)
    paths = [Path(c) for c in args.checkpoint]
    try:
        loaded = [_load_checkpoint(p, args.arch, spec) for p in paths]
    except (SeedImportError, UnpicklingRefused) as e:
        raise CLIError(str(e)) from None
    all_seed = all(p.suffix.lower() == ".h5" for p in paths)
    try:
        preprocessing = preprocessing_from_args(args, SEED_PREPROCESSING if all_seed else Preprocessing())
        envelope = Envelope(
            material=tuple(args.material or ()),
            particle_diameter_nm=_range("--particle-diameter-nm", args.particle_diameter_nm),
            pixel_size_nm=_range("--pixel-size-nm", args.pixel_size_nm),
            dose_e_per_A2=_range("--dose", args.dose),
            voltage_kv=_range("--voltage-kv", args.voltage_kv),
            support=tuple(args.support or ()),
        )
    except CardError as e:
        raise CLIError(str(e), 2) from None
    out = Path(args.out)
    try:
        bundle = export_bundle(
            [m for m, _ in loaded], out, name=args.name or out.resolve().name,
            arch="resunet-seed" if all_seed else args.arch,
            envelope=envelope, preprocessing=preprocessing,
            sources=[Source(path=p.name, sha256=sha256_file(p)) for p in paths],
            member_sources=[src for _, src in loaded], description=args.description,
            command=_command_line(args, "export onnx"), check_sizes=sizes, tolerance=args.tolerance,
            rtol=args.rtol, overwrite=args.force,
        )
    except (ExportError, BundleError, CardError) as e:
        raise CLIError(str(e)) from None
    diffs = bundle.card.metrics["onnx_export"]["max_abs_diff"]
    worst = max((v for d in diffs.values() for v in d.values()), default=0.0)
    print(f"{bundle.name}: {len(bundle.card.members)} member(s), ONNX Runtime vs torch max abs diff "
          f"{worst:.2e} -> {bundle.path}")
    return 0


# --- export tensorrt ----------------------------------------------------------------------

def _register_tensorrt(esub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = esub.add_parser(
        "tensorrt", help="build TensorRT engines for a bundle (NVIDIA GPU)",
        description="Build one TensorRT engine per ONNX member on this GPU, verify it against ONNX "
        "Runtime and record it in the card. Exit code 2 when TensorRT or a GPU is missing.")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle directory")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16",
                   help="engine precision (default: fp16)")
    p.add_argument("--tile-size", type=int, default=1024, metavar="PX",
                   help="largest network input side the engine accepts (tile plus halos), px; "
                   "also the profile's opt size (default: 1024)")
    p.add_argument("--max-batch", type=int, default=4, metavar="N",
                   help="largest batch of tiles, count (default: 4)")
    p.add_argument("--workspace-mib", type=int, default=2048, metavar="MIB",
                   help="TensorRT builder workspace, MiB (default: 2048)")
    p.add_argument("--tolerance", type=float, metavar="LOGIT",
                   help="max abs logit difference vs ONNX Runtime, logit units (default: fp16 5e-2, fp32 1e-3)")
    p.add_argument("--min-agreement", type=float, metavar="FRACTION",
                   help="minimum fraction of pixels whose argmax agrees with ONNX Runtime, 0-1 "
                   "(default: fp16 0.999, fp32 0.9999)")
    p.set_defaults(func=_cmd_export_tensorrt)


def _cmd_export_tensorrt(args: argparse.Namespace) -> int:
    try:
        bundle = build_engines(args.bundle, precision=args.precision, tile_size=args.tile_size,
                               max_batch=args.max_batch, workspace_mib=args.workspace_mib,
                               tolerance=args.tolerance, min_argmax_agreement=args.min_agreement)
    except TensorRTUnavailable as e:
        raise CLIError(str(e), 2) from None
    except ValueError as e:
        if isinstance(e, BundleError):
            raise CLIError(str(e)) from None
        raise CLIError(str(e), 2) from None
    except EngineBuildError as e:
        raise CLIError(str(e)) from None
    for e in (e for e in bundle.card.engines if e.kind == "tensorrt"):
        print(f"{e.file}: {e.precision} on {e.gpu} (TensorRT {e.tensorrt_version}), max abs diff "
              f"{e.max_abs_diff_vs_onnxruntime:.3g}, argmax agreement {e.argmax_agreement}")
    return 0


# --- export openvino ---------------------------------------------------------------------

def _register_openvino(esub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = esub.add_parser(
        "openvino", help="check an OpenVINO precision against FP32 on this CPU and record it in the card",
        description="Run OpenVINO at --precision and at FP32 on the bundle's verification tiles, per member, "
        "and record the parity (argmax agreement >= 99.9 %%, Dice >= 0.995) in the card's engines; daemons on "
        "this CPU then use it (serve --precision) or fall back to FP32 without re-checking. Exit code 2 when "
        "OpenVINO is missing or this CPU cannot run the precision natively; 0 also when the check fails "
        "(recorded as passed: false).")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle directory")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="precision to check against FP32 (default: bf16)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (count; default: usable cores)")
    p.set_defaults(func=_cmd_export_openvino)


def _cmd_export_openvino(args: argparse.Namespace) -> int:
    from fringelive.engine.backends import BackendUnavailable
    from fringelive.export.openvino_export import record_openvino_precision

    try:
        _, records = record_openvino_precision(args.bundle, args.precision, intra_op_threads=args.threads)
    except BackendUnavailable as e:
        raise CLIError(str(e), 2) from None
    except (BundleError, CardError) as e:
        raise CLIError(str(e)) from None
    for r in records:
        print(f"{r.member}: openvino {r.precision} vs fp32 on {r.cpu} (OpenVINO {(r.versions or {}).get('openvino')}): "
              f"argmax agreement {r.argmax_agreement:.5%}, Dice {r.dice:.5f}, max abs logit diff "
              f"{r.max_abs_diff_vs_fp32:.3g} -> {'passed' if r.passed else 'FAILED, daemons serve fp32'}")
    return 0


# --- export triton ------------------------------------------------------------------------

def _register_triton(esub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = esub.add_parser(
        "triton", help="write a bundle as an NVIDIA Triton Inference Server model repository",
        description="Write one Triton model per ensemble member, <prefix>_m<i> (config.pbtxt + 1/model.onnx, "
        "sha256 checked against the card), and <prefix>.fringelive.json (models + card) into REPO. "
        "Daemons with [model] backend = \"triton\" then send tile batches to these models. See docs/triton.md.")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle directory")
    p.add_argument("--out", required=True, metavar="REPO", help="model repository directory (created; may hold other models)")
    p.add_argument("--name", metavar="PREFIX",
                   help="model-name prefix: models are PREFIX_m0, PREFIX_m1, ... (default: the bundle name, "
                   "characters outside A-Z a-z 0-9 _ . - replaced by _)")
    p.add_argument("--platform", choices=["onnxruntime", "python"], default="onnxruntime",
                   help="Triton backend: onnxruntime (platform onnxruntime_onnx), or python (model.py running "
                   "the ONNX file with onnxruntime; for servers without the onnxruntime backend) (default: onnxruntime)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="max_batch_size: most tiles per network call, count; the dynamic batcher merges requests "
                   "up to it (default: 8)")
    p.add_argument("--instances", type=int, default=1, metavar="N",
                   help="model instances per device (instance_group count), count (default: 1)")
    p.add_argument("--kind", choices=["auto", "cpu", "gpu"], default="auto",
                   help="instance kind: gpu (KIND_GPU), cpu (KIND_CPU) or auto (GPU when the server has one) "
                   "(default: auto)")
    p.add_argument("--queue-delay-us", type=int, default=0, metavar="US",
                   help="how long the dynamic batcher waits for more requests, microseconds (default: 0)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="ONNX Runtime intra-op threads per instance, count (default: the runtime's)")
    p.add_argument("--force", action="store_true", help="replace models of this prefix already in REPO")
    p.set_defaults(func=_cmd_export_triton)


def _cmd_export_triton(args: argparse.Namespace) -> int:
    for option, v, lo in (("--max-batch", args.max_batch, 1), ("--instances", args.instances, 1),
                          ("--queue-delay-us", args.queue_delay_us, 0)):
        if v < lo:
            raise CLIError(f"{option} must be >= {lo}, got {v}", 2)
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}", 2)
    try:
        result = export_triton(args.bundle, args.out, prefix=args.name, platform=args.platform,
                               max_batch=args.max_batch, instances=args.instances, kind=args.kind,
                               queue_delay_us=args.queue_delay_us, intra_op_threads=args.threads,
                               overwrite=args.force)
    except TritonExportError as e:
        raise CLIError(str(e), 2) from None
    except BundleError as e:
        raise CLIError(str(e)) from None
    print(f"{len(result.models)} Triton model(s) ({result.platform}) in {result.repository}: "
          f"{', '.join(result.models)}; index {result.index.name}")
    return 0
