"""Start-up cost: the daemon config and the health client must not load torch (the Docker
HEALTHCHECK runs `fringelive health` within 10 s); the torch-free backend kinds agree with the
registry. Each import check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHECK = """
import sys
{imports}
heavy = sorted(m for m in ("torch", "onnxruntime", "openvino", "tensorrt", "tritonclient") if m in sys.modules)
print(",".join(heavy))
"""


def _heavy_modules_after(imports: str) -> str:
    out = subprocess.run([sys.executable, "-c", _CHECK.format(imports=imports)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


#: Imported one after another in one interpreter; the first that loads a heavy module is named.
_TORCH_FREE = ("fringelive.daemon.config", "fringelive.stream.health", "fringelive.cli.health", "fringelive.cli.merge",
               "fringelive.engine.backends", "fringelive.engine.pipeline_settings")


def test_import_loads_no_torch_or_runtime() -> None:
    imports = "".join(f"import {m}\nassert 'torch' not in sys.modules, {m!r}\n" for m in _TORCH_FREE)
    assert _heavy_modules_after(imports) == ""


def test_health_help_loads_no_torch() -> None:
    imports = ("import contextlib, io\nfrom fringelive.cli import main\n"
               "with contextlib.redirect_stdout(io.StringIO()):\n"
               "    try:\n        main(['health', '--help'])\n    except SystemExit:\n        pass")
    assert _heavy_modules_after(imports) == ""


def test_declared_kinds_are_the_registered_kinds() -> None:
    from fringelive.engine.backends import kinds
    from fringelive.engine.backends.base import backend_kinds, gpu_kinds

    assert backend_kinds() == kinds.BACKEND_KINDS
    assert gpu_kinds() == kinds.GPU_KINDS


def test_registering_an_undeclared_kind_names_it() -> None:
    from fringelive.engine.backends.base import register_backend

    with pytest.raises(ValueError, match="'no-such-kind'"):
        register_backend("no-such-kind")
    with pytest.raises(ValueError, match="GPU_KINDS"):
        register_backend("torch", gpu=("torch",))


def test_configuration_doc_lists_every_section() -> None:
    """docs/configuration.md (moved out of daemon/config.py's docstring) names every TOML section."""
    import dataclasses
    import re
    from pathlib import Path

    from fringelive.daemon.config import DaemonConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    sections = set(re.findall(r"^\[\[?(\w+)\]", doc, re.M))
    assert {f.name for f in dataclasses.fields(DaemonConfig)} <= sections
