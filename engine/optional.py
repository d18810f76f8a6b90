"""The optional heavy dependencies, each imported in one guarded place (torch-free).

Each ``import_x()`` returns the module or raises :class:`MissingDependency`, an ``ImportError``
whose ``cause`` is the original error (an ``ImportError``, or an ``OSError`` for a wheel whose
shared library does not load) and whose ``hint`` says what to install. Callers turn it into their
own error (``BackendUnavailable``, ``TensorRTUnavailable``, ...) with their own wording.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependency", "TORCH_HINT", "import_abtem", "import_openvino", "import_tensorrt", "import_torch",
           "import_tritonclient", "is_missing_torch", "torch_if_installed"]

#: What to install for the parts that need PyTorch (training, export, the torch/tensorrt/CUDA
#: backends); the CPU serving path (ONNX Runtime, OpenVINO, numpy preprocessing) does not.
TORCH_HINT = ("pip install 'fringelive[torch]' (CPU: torch==2.13.0 from the PyTorch CPU index, "
              "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)")


class MissingDependency(ImportError):
    """``module`` cannot be imported; ``str()`` is the cause's message, ``hint`` the install hint."""

    def __init__(self, module: str, cause: BaseException, hint: str) -> None:
        super().__init__(str(cause), name=module)
        self.module = module
        self.cause = cause
        self.hint = hint


def _import(module: str, hint: str, *, load_errors: tuple[type[BaseException], ...] = ()) -> ModuleType:
    try:
        return importlib.import_module(module)
    except (ImportError, *load_errors) as e:
        raise MissingDependency(module, e, hint) from None


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module (``fringelive[tensorrt]``, NVIDIA GPUs)."""
    return _import("tensorrt", "pip install 'fringelive[tensorrt]' on a machine with an NVIDIA GPU")


def import_tritonclient() -> ModuleType:
    """``tritonclient.http`` (``fringelive[triton]``)."""
    return _import("tritonclient.http", "pip install 'fringelive[triton]'")


def import_openvino() -> ModuleType:
    """The ``openvino`` module; an ``OSError`` (a wheel for another glibc, a broken shared
    library) is a :class:`MissingDependency` too, with that ``cause``."""
    return _import("openvino", "pip install openvino", load_errors=(OSError,))


def import_abtem() -> ModuleType:
    """The ``abtem`` module (multislice simulation; ``fringelive[sim]``)."""
    return _import("abtem", "pip install 'fringelive[sim]'")


def import_torch() -> ModuleType:
    """The ``torch`` module (``fringelive[torch]``: training, export, the torch, tensorrt and
    CUDA backends, preprocessing on a GPU); an ``OSError`` of its shared libraries counts too."""
    return _import("torch", TORCH_HINT, load_errors=(OSError,))


def torch_if_installed() -> ModuleType | None:
    """``torch`` when it is installed, else None (for settings that only matter with it)."""
    try:
        return import_torch()
    except MissingDependency:
        return None


def is_missing_torch(error: BaseException) -> bool:
    """Whether ``error`` is the import of torch failing (torch not installed)."""
    name = getattr(error, "name", None) or ""
    return isinstance(error, ImportError) and (name == "torch" or name.startswith("torch."))
