"""A local NVIDIA Triton Inference Server for tests and benchmarks: the ``tritonserver`` binary
that nvidia-pytriton bundles, started on a model repository (``LocalTritonServer``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["LocalTritonServer", "TritonServerError", "TritonServerInstall", "find_tritonserver"]


@dataclass(frozen=True)
class TritonServerInstall:
    """A ``tritonserver`` binary with its libraries and the python backend (as shipped in the
    ``nvidia-pytriton`` wheel): ``binary``, ``libs`` (shared libraries for LD_LIBRARY_PATH),
    ``python_backend`` (``libtriton_python.so`` + utils) and ``stub`` (the python backend stub
    for this interpreter's version, or None when the wheel has none for it)."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path | None


def find_tritonserver() -> TritonServerInstall | None:
    """The Triton server inside an installed ``nvidia-pytriton`` wheel (found without importing
    pytriton, whose Python API needs numpy < 2), else None. ``pip install --no-deps
    nvidia-pytriton`` installs it; it has the python backend only (no onnxruntime backend)."""
    import importlib.util
    import sys

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        libs = dist / "external_libs"
    backend = dist / "backends" / "python"
    if not binary.is_file() or not (backend / "libtriton_python.so").is_file():
        return None
    stub = dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
    return TritonServerInstall(binary=binary, libs=libs, python_backend=backend, stub=stub if stub.is_file() else None)


class TritonServerError(RuntimeError):
    """The local Triton server failed to start (the message holds the end of its log)."""


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started the server dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed test run leaves no server behind."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


class LocalTritonServer:
    """A ``tritonserver`` process serving ``repository`` over HTTP on 127.0.0.1 (gRPC and metrics
    off), for tests, benchmarks and CPU-only hosts.

    The python backend's stub runs this interpreter's ``libpython`` with this environment's
    site-packages on PYTHONPATH, so ``--platform python`` models find numpy and onnxruntime.
    ``start()`` picks a free port (retrying when another process takes it first), waits until
    ``/v2/health/ready`` answers (all models loaded) for at most ``ready_timeout_s`` s and raises
    :class:`TritonServerError` with the log's tail otherwise; ``close()`` sends SIGTERM to the
    server's process group (it and its stubs), SIGKILL after ``grace_s`` s. :attr:`url` is
    ``http://127.0.0.1:PORT``. The log goes to ``log_path`` (default: a temporary file). The
    server gets SIGTERM when the thread that started it ends (``PR_SET_PDEATHSIG``): a killed
    test run leaves nothing behind, so start it from a thread that outlives it.
    """

    port_attempts = 3

    def __init__(self, repository: str | os.PathLike[str], *, install: TritonServerInstall | None = None,
                 ready_timeout_s: float = 120.0, grace_s: float = 15.0, log_path: str | os.PathLike[str] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.repository = Path(repository)
        if not self.repository.is_dir():
            raise ValueError(f"model repository {self.repository} is not a directory")
        found = install or find_tritonserver()
        if found is None:
            raise TritonServerError("no tritonserver found: pip install --no-deps nvidia-pytriton (it bundles one)")
        self.install = found
        self.ready_timeout_s = float(ready_timeout_s)
        self.grace_s = float(grace_s)
        self.extra_args = list(extra_args)
        self._log_path = Path(log_path) if log_path is not None else None
        self._workdir: Path | None = None
        self._proc: Any = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _backend_dir(self, workdir: Path) -> Path:
        """``backends/python`` with the shipped backend and this Python's stub (symlinks)."""
        d = workdir / "backends" / "python"
        d.mkdir(parents=True)
        for f in self.install.python_backend.iterdir():
            if f.is_file():
                (d / f.name).symlink_to(f)
        if self.install.stub is not None:
            (d / "triton_python_backend_stub").symlink_to(self.install.stub)
        return d.parent

    def _env(self) -> dict[str, str]:
        import sys
        import sysconfig

        env = dict(os.environ)
        libdirs = [d for d in (sysconfig.get_config_var("LIBDIR"),) if d]  # this interpreter's libpython
        libdirs.append(str(self.install.libs))
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
        # The stub's embedded interpreter finds its prefix (and so a venv's site-packages) from
        # the first `python3` on PATH; PYTHONPATH as well for stubs that honour it.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        paths = sysconfig.get_paths()
        site = [p for p in dict.fromkeys((paths["purelib"], paths["platlib"])) if p]
        if env.get("PYTHONPATH"):
            site.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(site)
        return env

    def start(self) -> "LocalTritonServer":
        import subprocess
        import time
        import urllib.error
        import urllib.request

        if self._proc is not None:
            raise RuntimeError(f"the server is already running (pid {self._proc.pid})")
        self._workdir = Path(tempfile.mkdtemp(prefix="fringelive-triton-"))
        backends = self._backend_dir(self._workdir)
        log_path = self._log_path or self._workdir / "tritonserver.log"
        for attempt in range(1, self.port_attempts + 1):
            port = _free_loopback_port()
            cmd = [str(self.install.binary), "--model-repository", str(self.repository),
                   "--backend-directory", str(backends), "--http-address", "127.0.0.1", "--http-port", str(port),
                   "--allow-grpc", "false", "--allow-metrics", "false", "--exit-on-error", "true",
                   "--strict-readiness", "true", "--exit-timeout-secs", "5", *self.extra_args]
            with open(log_path, "wb") as log_file:
                self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=self._env(), start_new_session=True, preexec_fn=_die_with_parent)
            t_end = time.monotonic() + self.ready_timeout_s
            while self._proc.poll() is None and time.monotonic() < t_end:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                        if r.status == 200:
                            self.port = port
                            return self
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.2)
            rc = self._proc.poll()
            self._terminate()
            text = Path(log_path).read_text(errors="replace")
            if rc is not None and "address already in use" in text.lower() and attempt < self.port_attempts:
                continue
            self._cleanup()
            state = f"exited with code {rc}" if rc is not None else f"was not ready after {self.ready_timeout_s:g} s"
            lines = text.splitlines()
            tail = "\n".join([line for line in lines if line.startswith("E") or "UNAVAILABLE" in line][:10]
                             + [line for line in lines[-15:] if not line.startswith(("+", "|"))])
            raise TritonServerError(f"tritonserver {state} (repository {self.repository}, port {port}); "
                                    f"end of its log:\n{tail}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _terminate(self) -> None:
        import signal
        import subprocess

        proc, self._proc = self._proc, None
        self.port = None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the group of the process we started: server + stubs
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        try:  # stubs outliving the server (they exit on their own when it is gone)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def close(self) -> None:
        """Stop the server and its stubs; idempotent."""
        self._terminate()
        self._cleanup()

    def __enter__(self) -> "LocalTritonServer":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
