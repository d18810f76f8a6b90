"""Backends: ONNX Runtime (CPU) and torch agree; unavailable kinds fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from fringelive.engine.backends import (
    BACKEND_KINDS,
    Backend,
    BackendUnavailable,
    available_backends,
    create_backend,
    create_backends,
)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 1, 64, 96)).astype(np.float32)


def test_onnxruntime_and_torch_agree(tiny_bundle, batch: np.ndarray) -> None:
    with create_backend("onnxruntime", tiny_bundle, intra_op_threads=1) as ort_b, \
            create_backend("torch", tiny_bundle) as torch_b:
        assert isinstance(ort_b, Backend) and ort_b.name == "onnxruntime" and ort_b.device == "cpu"
        assert torch_b.name == "torch" and torch_b.device == "cpu"
        a = ort_b(batch)
        b = torch_b(batch)
    assert a.shape == b.shape == (2, 2, 64, 96)
    assert a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() < 1e-4
    assert ort_b.closed and torch_b.closed
    with pytest.raises(RuntimeError, match="closed"):
        ort_b(batch)


def test_source_forms(tiny_bundle, batch: np.ndarray) -> None:
    """A bundle directory, a member file name and a bare ONNX file give the same backend."""
    onnx_file = tiny_bundle.path / tiny_bundle.card.members[0].file
    with create_backend("onnxruntime", tiny_bundle.path, member=tiny_bundle.card.members[0].file) as a, \
            create_backend("onnxruntime", onnx_file) as b:
        np.testing.assert_array_equal(a(batch), b(batch))
    backends = create_backends("onnxruntime", tiny_bundle)
    assert len(backends) == 1
    for x in backends:
        x.close()


def test_batch_validation(tiny_bundle) -> None:
    with create_backend("onnxruntime", tiny_bundle) as b:
        with pytest.raises(ValueError, match=r"batch must have shape \(N, 1, h, w\).*got \(1, 64, 64\)"):
            b(np.zeros((1, 64, 64), np.float32))
        with pytest.raises(ValueError, match="batch must have dtype float32, got float64"):
            b(np.zeros((1, 1, 64, 64)))
        with pytest.raises(TypeError, match="numpy array"):
            b([[0.0]])


@pytest.mark.parametrize("kind", ["onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"])
def test_unavailable_gpu_kinds_raise(tiny_bundle, kind: str) -> None:
    reason = available_backends()[kind]
    if reason is None:
        pytest.skip(f"{kind} is available on this machine")
    with pytest.raises(BackendUnavailable, match=f"backend '{kind}' is not available: ") as info:
        create_backend(kind, tiny_bundle)
    assert info.value.kind == kind and info.value.reason
    assert isinstance(info.value, RuntimeError)


def test_torch_cuda_unavailable_or_missing_weights(tiny_bundle, tmp_path) -> None:
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="backend 'torch' is not available: no CUDA GPU"):
            create_backend("torch", tiny_bundle, device="cuda")
    from fringelive.bundle.bundle_io import write_bundle

    card = tiny_bundle.card
    no_weights = write_bundle(tmp_path / "b", card.replace(members=tuple(
        m.__class__(file=m.file, sha256=m.sha256) for m in card.members)), tiny_bundle.member_paths)
    with pytest.raises(BackendUnavailable, match="has no torch weights"):
        create_backend("torch", no_weights)
    with pytest.raises(BackendUnavailable, match="lists no TensorRT engine|tensorrt"):
        create_backend("tensorrt", no_weights)


def test_argument_errors(tiny_bundle) -> None:
    with pytest.raises(ValueError, match=r"unknown backend kind 'tflite'; known: \['onnxruntime'"):
        create_backend("tflite", tiny_bundle)
    with pytest.raises(ValueError, match="member index must be in 0..0 .* got 3"):
        create_backend("onnxruntime", tiny_bundle, member=3)
    with pytest.raises(ValueError, match="device must be 'cpu', got 'cuda'"):
        create_backend("onnxruntime", tiny_bundle, device="cuda")
    with pytest.raises(ValueError, match="intra_op_threads must be a positive integer or None, got 0"):
        create_backend("onnxruntime", tiny_bundle, intra_op_threads=0)
    with pytest.raises(ValueError, match=r"members must not repeat a member, got \[0, 0\]"):
        create_backends("onnxruntime", tiny_bundle, members=[0, 0])
    with pytest.raises(ValueError, match="member index must be in 0..0 .* got 1"):
        create_backends("onnxruntime", tiny_bundle, members=[1])


def test_available_backends_lists_every_kind() -> None:
    avail = available_backends()
    assert tuple(avail) == BACKEND_KINDS
    assert avail["onnxruntime"] is None and avail["torch"] is None
    assert all(v is None or isinstance(v, str) and v for v in avail.values())
