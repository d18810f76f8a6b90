"""A restricted unpickler: only globals on an explicit allowlist can be loaded.

A pickle names every class or function it needs as a *global* (``module.name``) and may call
any callable it can name, so loading an untrusted pickle with :mod:`pickle` can run arbitrary
code (``os.system``, ``builtins.eval``, ...). :class:`RestrictedUnpickler` resolves globals only
through a fixed mapping ``(module, name) -> object`` and raises :class:`UnpicklingRefused`,
naming the global, for anything else — before the global is imported, so nothing runs.

:func:`make_pickle_module` packages an allowlist as a module-like object exposing
``Unpickler``/``load``/``loads``, the interface :func:`torch.load` expects from its
``pickle_module`` argument::

    torch.load(f, map_location="cpu", pickle_module=make_pickle_module(allowed), weights_only=False)

(``torch.load`` itself maps storage type names such as ``torch.FloatStorage`` before they reach
``find_class``; every other global goes through the allowlist.)
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import types
from typing import IO, Any, Mapping

__all__ = ["UnpicklingRefused", "RestrictedUnpickler", "make_pickle_module", "global_name"]

class UnpicklingRefused(pickle.UnpicklingError):
    """The pickle references a global that is not on the allowlist (``refused`` names it)."""

    def __init__(self, refused: str, source: str | None = None, pickled_as: str | None = None) -> None:
        where = f"{source}: " if source else ""
        alias = f" (pickled as {pickled_as!r})" if pickled_as and pickled_as != refused else ""
        super().__init__(
            f"{where}refused to load global {refused!r}{alias}: it is not on the allowlist of this "
            "loader (the file may be malicious, or come from a different network definition)"
        )
        self.refused = refused


def global_name(module: str, name: str) -> str:
    """``module.name`` in Python 3 spelling: Python 2 names that protocol <= 2 pickles carry are
    mapped the way ``fix_imports`` does (``__builtin__.set`` → ``builtins.set``,
    ``commands.call`` → ``subprocess.call``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An :class:`pickle.Unpickler` whose globals come only from :attr:`allowed`.

    ``allowed`` maps ``"module.name"`` (Python 3 module names) to the object to return.
    Subclasses (see :func:`make_pickle_module`) set it as a class attribute.
    """

    allowed: Mapping[str, Any] = {}
    source: str | None = None

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        key = global_name(module, name)
        try:
            return self.allowed[key]
        except KeyError:
            raise UnpicklingRefused(key, self.source, pickled_as=f"{module}.{name}") from None


def make_pickle_module(allowed: Mapping[str, Any], source: str | None = None) -> types.ModuleType:
    """A module object for ``torch.load(pickle_module=...)`` that loads only ``allowed`` globals.

    allowed: ``{"module.name": object}``; module names in Python 3 spelling.
    source: a label (e.g. the file name) put in refusal messages.
    """
    for key in allowed:
        if not isinstance(key, str) or "." not in key:
            raise ValueError(f"allowlist keys must be 'module.name' strings, got {key!r}")
    frozen = types.MappingProxyType(dict(allowed))
    unpickler = type("Unpickler", (RestrictedUnpickler,), {"allowed": frozen, "source": source})

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return load(io.BytesIO(data), **kwargs)

    mod = types.ModuleType("fringelive_restricted_pickle")
    mod.Unpickler = unpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    mod.loads = loads  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    mod.__version__ = "1"  # type: ignore[attr-defined]
    return mod
