"""The ``fringelive`` console script: one entry point, subcommands registered by modules.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds the
subcommands listed for it with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit
code. :func:`main` imports only the module of the command given (all of them for ``--help`` or
an unknown command), so a light command (``send``, ``watch``) does not load the engine.

Exit codes: 0 success, 1 runtime failure, 2 usage error or a missing optional dependency
(e.g. TensorRT without a GPU).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Command module → the subcommands its ``register`` adds.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "fringelive.cli.serve": ("serve",),
    "fringelive.cli.health": ("health",),  # Docker HEALTHCHECK, systemd, monitoring
    "fringelive.cli.stream": ("send", "watch"),
    "fringelive.cli.merge": ("merge",),  # results of several workers, in frame order
    "fringelive.cli.tracks": ("tracks",),  # per-track time series of a recording, CSV
    "fringelive.cli.demo": ("demo",),
    "fringelive.cli.calibrate": ("calibrate",),  # drift reference statistics
    "fringelive.cli.calibrate_camera": ("calibrate-camera",),  # also `calibrate camera`: the [camera] section
    "fringelive.cli.train": ("synth", "dataset", "train", "finetune", "evaluate"),
    "fringelive.cli.export": ("import-seed", "export"),  # export onnx|tensorrt|triton|openvino
}


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
        elif word == "--log-level":
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or, given ``argv`` naming a known command, with that
    command's module only."""
    parser = argparse.ArgumentParser(
        prog="fringelive",
        description="Streaming nanoparticle segmentation for HRTEM cameras, and the tools that "
        "train, export and retrain its models.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging verbosity (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = None if argv is None else _command_of(argv)
    modules = [m for m, commands in COMMAND_MODULES.items() if command in commands] or list(COMMAND_MODULES)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _command_of(argv) == "calibrate" and "camera" in argv:  # `calibrate camera ...` = `calibrate-camera ...`
        i = argv.index("calibrate")
        if argv[i + 1:i + 2] == ["camera"]:
            argv[i:i + 2] = ["calibrate-camera"]
    parser = build_parser(argv)
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
