"""``benchmarks/gpu_check.sh --dry-run`` runs on a CPU: syntax, the client, each step's CPU
fallback (export tensorrt and serve --backend tensorrt / onnxruntime-cuda exit 2 with one line),
and a real CPU daemon measured through the same client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _env(tmp_path: Path) -> dict[str, str]:
    # the console script `fringelive` -> fringelive.cli:main, run by this interpreter
    return dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1",
                FRINGELIVE_CMD=f"{sys.executable} -m fringelive.cli")


def test_gpu_check_syntax() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dry-run" in out.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


@pytest.mark.slow  # ~40 s on an idle 2-core box, minutes under load (.ci/run runs the slow tests)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bash + /proc")
def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--work", str(tmp_path / "work")], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=420)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "mode: dry-run" in out
    if "cuda True" not in out:  # a CPU machine: each GPU step fails cleanly and is skipped
        assert "TensorRT unavailable (exit 2" in out, out
        assert "tensorrt: unavailable here (serve exit 2)" in out, out
        assert "onnxruntime-cuda: unavailable here (serve exit 2)" in out, out
        assert "H2D: n/a" in out
    assert "RESULT onnxruntime:" in out and "STAGES onnxruntime" in out, out
    assert "inference" in out.split("STAGES onnxruntime", 1)[1]
    assert "done in" in p.stdout and p.stdout.rstrip().endswith("OK"), out
    assert "awk:" not in p.stderr and "Traceback" not in out, out


# --- offline machines: --wheels DIR (the lent GPU machine reaches no network) -----------------------


def _wheel(directory: Path, name: str = "fl_probe", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel (one module) with a valid RECORD."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    files[f"{name}-{version}.dist-info/RECORD"] = record.encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bash")
def test_gpu_check_offline_wheels_install_into_the_work_dir(tmp_path: Path) -> None:
    """``--wheels DIR``: every wheel there into ``$WORK/site`` without an index or dependency
    resolution (for real under --dry-run: it touches the work dir only); ``--install-only`` stops
    after step 1."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    work = tmp_path / "work"
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--install-only", "--wheels", str(wheels), "--work", str(work)],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "1 to install" in out and "--install-only: stopping after step 1" in out, out
    assert (work / "site" / "fl_probe" / "__init__.py").is_file(), out
    assert "no tensorrt wheel" in out and "step 2" not in out, out
    missing = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--install-only", "--wheels", str(tmp_path / "none"),
                              "--work", str(work)], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert "--wheels" in missing.stdout and "no such directory" in missing.stdout, missing.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bash")
def test_gpu_check_runs_fringelive_from_the_checkout_without_installing(tmp_path: Path) -> None:
    """Where fringelive is not installed (a GPU machine's image), the script links this checkout's
    folders into a ``fringelive`` namespace tree, as pyproject.toml's package-dir maps them, and
    runs ``python -m fringelive.cli``."""
    body = subprocess.run(["sed", "-n", "/^link_source_tree() {/,/^}/p", str(SCRIPT)], capture_output=True,
                          text=True, check=True).stdout
    assert body.startswith("link_source_tree()")
    snippet = (f'ROOT={ROOT}; WORK={tmp_path}; PYTHON={sys.executable}; say() {{ echo "$*"; }}\n{body}\n'
               'link_source_tree\n$FL --help >/dev/null && "$PYTHON" -c '
               '"import fringelive.engine.pipeline as m, fringelive.default_bundle as d; print(m.__file__)"\n')
    p = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=""))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(tmp_path / "src" / "fringelive" / "engine" / "pipeline.py"), p.stdout
    for folder in ("bundle", "engine", "daemon", "cli", "default_bundle"):
        assert (tmp_path / "src" / "fringelive" / folder).resolve() == (ROOT / folder).resolve()


def test_gpu_wheels_script_options() -> None:
    wheels = ROOT / "benchmarks" / "gpu_wheels.sh"
    assert subprocess.run(["bash", "-n", str(wheels)]).returncode == 0
    out = subprocess.run(["bash", str(wheels), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--python-version" in out.stdout and "gpu_check.sh --wheels" in out.stdout
    bad = subprocess.run(["bash", str(wheels), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
