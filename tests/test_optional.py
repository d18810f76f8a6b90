"""The optional heavy dependencies are imported in one guarded place each (engine/optional.py)."""

from __future__ import annotations

import importlib.util

import pytest

from fringelive.engine import optional
from fringelive.engine.backends.base import BackendUnavailable


def test_missing_module_is_an_import_error_with_cause_and_hint() -> None:
    with pytest.raises(ImportError) as e:
        optional._import("fringelive_no_such_module", "pip install nothing")
    assert isinstance(e.value, optional.MissingDependency)
    assert e.value.module == "fringelive_no_such_module" and e.value.hint == "pip install nothing"
    assert "fringelive_no_such_module" in str(e.value) and isinstance(e.value.cause, ImportError)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_guard_is_shared_by_backend_and_exporter() -> None:
    from fringelive.engine.backends.tensorrt import _import_tensorrt
    from fringelive.export.tensorrt_export import TensorRTUnavailable, require_tensorrt

    with pytest.raises(optional.MissingDependency):
        optional.import_tensorrt()
    with pytest.raises(BackendUnavailable, match="fringelive\\[tensorrt\\]"):
        _import_tensorrt()
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed .*tensorrt"):
        require_tensorrt()
