"""The ``fringelive`` console script: one entry point, subcommands registered by modules.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
subcommands with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit code. Modules keep
heavy imports (torch, onnxruntime) inside their functions so ``fringelive --help`` stays fast.

Exit codes: 0 success, 1 runtime failure, 2 usage error or a missing optional dependency
(e.g. TensorRT without a GPU).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "fringelive.cli.serve",    # serve
    "fringelive.cli.health",   # health (Docker HEALTHCHECK, systemd, monitoring)
    "fringelive.cli.stream",   # send, watch
    "fringelive.cli.merge",    # merge (results of several workers, in frame order)
    "fringelive.cli.demo",     # demo
    "fringelive.cli.calibrate",  # calibrate (drift reference statistics)
    "fringelive.cli.train",  # synth, dataset, train, finetune, evaluate
    "fringelive.cli.export",   # import-seed, export onnx|tensorrt
)


class CLIError(Exception):
    """A user-facing failure: printed as one line ``fringelive: error: ...``, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fringelive",
        description="Streaming nanoparticle segmentation for HRTEM cameras, and the tools that "
        "train, export and retrain its models.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = ["fringelive", *argv]  # the command line, for provenance records
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"fringelive: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
