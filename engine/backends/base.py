"""The backend interface and registry (timm style): a :class:`Backend` wraps ONE ensemble member,
``backend(batch (N, 1, h, w) float32) -> (N, C, h, w) float32 logits``. Each implementation module
registers its class for its kinds with :func:`register_backend`; :func:`create_backend` builds one
by kind, :func:`backend_kinds` lists the registered kinds (``BACKEND_KINDS`` in
:mod:`~.kinds`) and :func:`available_backends` says which can run here.

A new backend: a module in this package with a ``Backend`` subclass decorated with
``@register_backend("my-kind")`` implementing ``from_member`` (and ``from_file`` for a bare model
file) and ``unavailable``; declare the kind and its module in :mod:`~.kinds`. The modules are
imported on first use of the registry (:func:`create_backend`, :func:`backend_kinds`, ...).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fringelive.bundle.bundle_io import Bundle, load_bundle
from fringelive.bundle.card import Member
from fringelive.engine.backends.kinds import BACKEND_KINDS, GPU_KINDS, KIND_MODULES
from fringelive.engine.optional import TORCH_HINT, is_missing_torch

__all__ = [
    "Backend",
    "BackendUnavailable",
    "register_backend",
    "backend_kinds",
    "gpu_kinds",
    "create_backend",
    "create_backends",
    "available_backends",
    "usable_cpu_count",
    "default_trt_cache_dir",
]

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here (runtime not installed, no GPU, file missing)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"backend {kind!r} is not available: {reason}")
        self.kind = kind
        self.reason = reason


def usable_cpu_count() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines built by ONNX Runtime are cached: ``$FRINGELIVE_CACHE_DIR/ort-trt``
    or ``~/.cache/fringelive/ort-trt``."""
    root = os.environ.get("FRINGELIVE_CACHE_DIR") or Path.home() / ".cache" / "fringelive"
    return Path(root) / "ort-trt"


# --- the interface ----------------------------------------------------------------------------


class Backend:
    """One ensemble member ready to run: ``backend(batch (N, 1, h, w) float32) -> (N, C, h, w)``.

    Attributes: ``name`` (the kind, e.g. ``"onnxruntime"``), ``device`` (``"cpu"``,
    ``"cuda:0"``), ``member`` (the member's file name in its bundle, else the model path). Calls are serialised by a
    lock, so one backend may be shared by threads. Use as a context manager or call close().
    """

    name: str = "backend"
    #: Numerical precision of the network's arithmetic: "fp32" | "bf16" | "fp16" | "int8" (inputs and
    #: outputs are always float32); set by the subclass from what actually runs.
    precision: str = "fp32"
    #: Largest input ``(N, h, w)`` the runtime accepts (a TensorRT engine's profile), else None.
    input_limits: tuple[int, int, int] | None = None

    def __init__(self, device: str, member: str) -> None:
        self.device = device
        self.member = member
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array (N, 1, h, w) float32, got {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[1] != 1 or min(batch.shape) < 1:
            raise ValueError(f"batch must have shape (N, 1, h, w) with N, h, w >= 1, got {batch.shape}")
        if batch.dtype != np.float32:
            raise ValueError(f"batch must have dtype float32, got {batch.dtype}")
        batch = np.ascontiguousarray(batch)
        with self._lock:
            out = self._run(batch)
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise RuntimeError(f"{self!r} returned logits of shape {out.shape} for a batch of shape {batch.shape}")
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime session / GPU memory. Idempotent."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.precision} {self.member} on {self.device}>"

    # --- construction by kind (the registry calls these) ------------------------------------

    @classmethod
    def from_member(cls, kind: str, bundle: Bundle, index: int, member: Member, **options: Any) -> "Backend":
        """The backend of ``kind`` for member ``index`` (``member``) of ``bundle``; ``options``
        are :func:`create_backend`'s keyword arguments."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def from_file(cls, kind: str, path: Path, **options: Any) -> "Backend":
        """The backend of ``kind`` for a bare model file (no bundle)."""
        raise ValueError(f"backend {kind!r} needs a bundle, got the file {path}")

    @classmethod
    def unavailable(cls, kind: str) -> str | None:
        """None when ``kind`` can run here, else why not (nothing is built)."""
        return None


# --- registry -----------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Backend]] = {}
_GPU_KINDS: list[str] = []
#: kind → why it cannot load (its module needs PyTorch, which is not installed).
_NEEDS_TORCH: dict[str, str] = {}


def register_backend(*kinds: str, gpu: Sequence[str] = ()) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator: register a :class:`Backend` subclass for ``kinds`` (``gpu``: those of
    them that need a CUDA GPU). Each kind must be declared in :mod:`~.kinds` (``BACKEND_KINDS``,
    ``GPU_KINDS``), so the torch-free list and the registry cannot disagree."""
    for kind in kinds:
        if kind not in BACKEND_KINDS:
            raise ValueError(f"backend kind {kind!r} is not declared in engine/backends/kinds.py BACKEND_KINDS "
                             f"{list(BACKEND_KINDS)}")
    if set(gpu) != {k for k in kinds if k in GPU_KINDS}:
        raise ValueError(f"gpu kinds {sorted(gpu)} of {list(kinds)} disagree with engine/backends/kinds.py "
                         f"GPU_KINDS {list(GPU_KINDS)}")

    def deco(cls: type[Backend]) -> type[Backend]:
        for kind in kinds:
            if kind in _REGISTRY:
                raise ValueError(f"backend kind {kind!r} is already registered")
            _REGISTRY[kind] = cls
        _GPU_KINDS.extend(k for k in gpu if k not in _GPU_KINDS)
        return cls

    return deco


def _register_all() -> None:
    """Import every backend module of :data:`~.kinds.KIND_MODULES` (their decorators register
    them; torch and the runtimes load here, not when the package is imported)."""
    if len(_REGISTRY) + len(_NEEDS_TORCH) == len(BACKEND_KINDS):
        return
    for module in dict.fromkeys(KIND_MODULES.values()):
        try:
            importlib.import_module(f"fringelive.engine.backends.{module}")
        except ImportError as e:  # torch is optional (fringelive[torch]); the CPU kinds never need it
            if not is_missing_torch(e):
                raise
            for kind in (k for k, m in KIND_MODULES.items() if m == module):
                _NEEDS_TORCH[kind] = f"the {kind} backend needs PyTorch, which is not installed: {TORCH_HINT}"
    missing = [k for k in BACKEND_KINDS if k not in _REGISTRY and k not in _NEEDS_TORCH]
    if missing:
        raise RuntimeError(f"backend kinds {missing} are declared in engine/backends/kinds.py but no module "
                           "registers them")


def backend_kinds() -> tuple[str, ...]:
    """The registered kinds, in the order of :data:`~.kinds.BACKEND_KINDS`."""
    _register_all()
    return tuple(k for k in BACKEND_KINDS if k in _REGISTRY)


def gpu_kinds() -> tuple[str, ...]:
    """The registered kinds that need a CUDA GPU."""
    _register_all()
    return tuple(k for k in GPU_KINDS if k in _GPU_KINDS)


# --- factories ----------------------------------------------------------------------------------


def _member_of(bundle: "Bundle", member: int | str) -> tuple[int, "Member"]:
    members = bundle.card.members
    if isinstance(member, str):
        for i, m in enumerate(members):
            if m.file == member:
                return i, m
        raise ValueError(f"bundle {bundle.path} has no member {member!r}; members: {[m.file for m in members]}")
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < len(members):
        raise ValueError(f"member index must be in 0..{len(members) - 1} for bundle {bundle.path}, got {member!r}")
    return member, members[member]


def create_backend(kind: str, source: "Bundle | str | os.PathLike[str]", *, member: int | str = 0,
                   device: str | None = None, intra_op_threads: int | None = None,
                   trt_cache_dir: str | os.PathLike[str] | None = None, chunk: int = 1,
                   triton_url: str = "http://127.0.0.1:8000", triton_model_prefix: str | None = None,
                   triton_timeout_s: float = 30.0, precision: str = "fp32") -> Backend:
    """Build one backend of ``kind`` for one ensemble member.

    ``source`` is a loaded :class:`~fringelive.bundle.bundle_io.Bundle` (``member`` selects by index
    or file name), a bundle directory, or, for the onnxruntime kinds, an ``.onnx`` file, for
    ``tensorrt`` a ``.plan`` engine file. ``device``: "cpu" or "cuda[:N]"; None picks the kind's
    own ("cpu" for onnxruntime and torch, "cuda:0" for the GPU kinds). ``intra_op_threads``:
    CPU threads per inference (None = usable cores). ``trt_cache_dir``: engine cache of
    ``onnxruntime-tensorrt``. ``chunk``: samples per host→device copy on CUDA.

    ``triton``: member ``i`` of a bundle is Triton model ``<triton_model_prefix>_m<i>`` (prefix
    default: the bundle name as ``fringelive export triton`` writes it) on the server at
    ``triton_url``; ``triton_timeout_s``: connect/read timeout per request, s; ``device`` must be
    None (the server places the model), ``intra_op_threads``, ``trt_cache_dir`` and ``chunk`` do
    not apply.

    ``precision``: the arithmetic ``openvino`` compiles for (``fp32`` | ``bf16`` | ``fp16``; other
    kinds run their own and ignore it). Whether a non-FP32 precision may serve is decided by the
    parity gate (``engine/precision.py``), not here.

    Raises :class:`BackendUnavailable` when the runtime, GPU, server or a needed file is missing.
    """
    kinds = backend_kinds()
    if kind in _NEEDS_TORCH:
        raise BackendUnavailable(kind, _NEEDS_TORCH[kind])
    if kind not in kinds:
        raise ValueError(f"unknown backend kind {kind!r}; known: {list(kinds)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    cls = _REGISTRY[kind]
    options: dict[str, Any] = dict(device=device, intra_op_threads=intra_op_threads, trt_cache_dir=trt_cache_dir,
                                   chunk=chunk, triton_url=triton_url, triton_model_prefix=triton_model_prefix,
                                   triton_timeout_s=triton_timeout_s, precision=precision)
    if not isinstance(source, Bundle):
        path = Path(source)
        if not path.is_dir():
            return cls.from_file(kind, path, **options)
        source = load_bundle(path)
    bundle = source
    index, m = _member_of(bundle, member)
    backend = cls.from_member(kind, bundle, index, m, **options)
    backend.member = m.file
    return backend


def create_backends(kind: str, bundle: "Bundle | str | os.PathLike[str]", members: Sequence[int] | None = None,
                    **kwargs: Any) -> list[Backend]:
    """One backend per selected member (``members`` indices; None = all), in that order. The
    keyword arguments are those of :func:`create_backend`. On failure the ones already built are
    closed before the error propagates."""

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    count = len(bundle.card.members)
    indices = list(range(count)) if members is None else list(members)
    if not indices:
        raise ValueError("members must select at least one ensemble member, got an empty selection")
    if len(set(indices)) != len(indices):
        raise ValueError(f"members must not repeat a member, got {indices}")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
            raise ValueError(f"member index must be in 0..{count - 1} for bundle {bundle.path}, got {i!r}")
    built: list[Backend] = []
    try:
        for i in indices:
            built.append(create_backend(kind, bundle, member=i, **kwargs))
    except BaseException:
        for b in built:
            b.close()
        raise
    return built


def available_backends() -> dict[str, str | None]:
    """Each kind → None when it can run here, else the reason it cannot (nothing is built; GPU
    kinds are only checked for their runtime and a visible GPU, ``triton`` for tritonclient)."""
    kinds = backend_kinds()
    return {kind: (_REGISTRY[kind].unavailable(kind) if kind in _REGISTRY else _NEEDS_TORCH[kind])
            for kind in BACKEND_KINDS if kind in kinds or kind in _NEEDS_TORCH}
