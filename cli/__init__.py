"""The ``fringelive`` console script: one entry point, subcommands registered by modules.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds the
subcommands listed for it with ``set_defaults(func=...)`` and the summary of :data:`COMMANDS`
(``help=summary(name)``); ``func(args) -> int`` is the exit code. :func:`main` imports only the
module of the command given, so a light command (``send``, ``watch``) does not load the engine;
``--help``, no command or an unknown one list the commands from :data:`COMMANDS` and import no
command module.

Exit codes: 0 success, 1 runtime failure, 2 usage error or a missing optional dependency
(e.g. TensorRT without a GPU).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fringelive.engine.optional import TORCH_HINT, is_missing_torch

#: Command → (its module, the one-line summary of ``fringelive --help``), in the order listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("fringelive.cli.serve", "run the streaming segmentation daemon"),
    # Docker HEALTHCHECK, systemd, monitoring
    "health": ("fringelive.cli.health", "check that a running daemon serves (exit 0) or say what failed (exit 1)"),
    "send": ("fringelive.cli.stream", "replay image files (.npy, .tif, .png/.jpg, .dm3/.dm4, .ser/.emd) to the daemon"),
    "watch": ("fringelive.cli.stream", "print (and record) the daemon's published results and errors"),
    "merge": ("fringelive.cli.merge", "merge the results of several daemon workers into one stream in frame order"),
    "tracks": ("fringelive.cli.tracks", "per-track time series of a recording (summary, CSV export)"),
    "demo": ("fringelive.cli.demo", "run the daemon on a simulated camera and show live results"),
    "calibrate": ("fringelive.cli.calibrate",
                  "store drift reference statistics (CUSUM threshold, dose calibration) in a bundle"),
    # also `calibrate camera`
    "calibrate-camera": ("fringelive.cli.calibrate_camera",
                         "camera gain/offset by photon transfer → the [camera] config section"),
    "synth": ("fringelive.cli.synth", "simulate HRTEM training frames and masks (abTEM multislice or fast)"),
    "dataset": ("fringelive.cli.dataset", "make training patches from labelled experimental images"),
    "train": ("fringelive.cli.train", "train with the published recipe and k-fold cross-validation"),
    "finetune": ("fringelive.cli.train", "transfer learning from a bundle or checkpoint on new data"),
    "evaluate": ("fringelive.cli.evaluate",
                 "Dice, error rates and a generalization matrix of bundles on sample sets"),
    "import-seed": ("fringelive.cli.export", "import the published checkpoints (.h5) as bundles"),
    # export onnx|tensorrt|triton|openvino
    "export": ("fringelive.cli.export", "export models as bundles (ONNX), TensorRT engines, Triton repositories"),
}

#: Command module → the subcommands its ``register`` adds (from :data:`COMMANDS`).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    module: tuple(c for c, (m, _) in COMMANDS.items() if m == module) for module, _ in COMMANDS.values()}


def summary(command: str) -> str:
    """The one-line summary of ``command`` (its ``add_parser(help=...)``)."""
    return COMMANDS[command][1]


class CLIError(Exception):
    """A user-facing failure: printed as one line ``fringelive: error: ...``, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option or its value)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif len(word) > 2 and "--log-level".startswith(word):  # argparse takes --log, --log-l, ...
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command; given ``argv``, with the module of the command it names
    only, or, when it names none or an unknown one, with the summaries of :data:`COMMANDS` (for
    the help and the error; no command module imported)."""
    parser = argparse.ArgumentParser(
        prog="fringelive",
        description="Streaming nanoparticle segmentation for HRTEM cameras, and the tools that "
        "train, export and retrain its models.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if argv is None:
        modules = list(COMMAND_MODULES)
    elif (command := _command_of(argv)) in COMMANDS:
        modules = [COMMANDS[command][0]]
    else:
        for name, (_, text) in COMMANDS.items():
            sub.add_parser(name, help=text, add_help=False)
        return parser
    for module in modules:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _command_of(argv) == "calibrate" and "camera" in argv:  # `calibrate camera ...` = `calibrate-camera ...`
        i = argv.index("calibrate")
        if argv[i + 1:i + 2] == ["camera"]:
            argv[i:i + 2] = ["calibrate-camera"]
    if _command_of(argv) in ("serve", "demo"):
        # before numpy loads: the daemon's parallelism is the runtime's threads and its worker/finisher
        # pipeline; BLAS only runs the flat-field fit's small products, where idle OpenBLAS threads
        # spin (2.7x the preprocessing CPU time measured on 2 cores; benchmarks/README.md)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        parser = build_parser(argv)
    except ImportError as e:  # a command of the torch extra (train, export, ...) in a core-only install
        if not is_missing_torch(e):
            raise
        print(f"fringelive: error: {_command_of(argv)} needs PyTorch, which is not installed: {TORCH_HINT}",
              file=sys.stderr)
        return 2
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
    except ImportError as e:
        if not is_missing_torch(e):
            raise
        print(f"fringelive: error: {args.command} needs PyTorch, which is not installed: {TORCH_HINT}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
