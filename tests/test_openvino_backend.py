"""The ``openvino`` backend, the precision gate and ``backend = "auto"``, on the real default bundle.

Tests that need OpenVINO skip cleanly without it (``pytest.importorskip``); the import guard and
the pure precision policy run everywhere.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest

from fringelive.bundle.bundle_io import load_bundle
from fringelive.default_bundle import directory
from fringelive.engine import precision as P
from fringelive.engine.backends import openvino as ovb
from fringelive.engine.backends.base import BackendUnavailable, create_backend

DEFAULT_BUNDLE = directory()


@pytest.fixture(scope="module")
def ov():
    """The openvino module, or a clean skip when it is absent (importorskip) or broken."""
    try:
        return pytest.importorskip("openvino")
    except (ImportError, OSError) as e:  # installed but not loadable (another glibc, missing library)
        pytest.skip(f"openvino cannot be imported: {e}")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return P.synthetic_tiles(2, 256, seed=1)  # a 256² batch of 2, fringe discs, standardised


@pytest.fixture(scope="module")
def ort_backend():
    b = create_backend("onnxruntime", str(DEFAULT_BUNDLE), intra_op_threads=1)
    yield b
    b.close()


@pytest.fixture(scope="module")
def ov_backend(ov):
    b = create_backend("openvino", str(DEFAULT_BUNDLE), intra_op_threads=1)
    yield b
    b.close()


class Perturbed:
    """A backend whose class-1 logit is pushed up by ``shift`` on the left half of every tile:
    masks disagree with FP32 there, as a broken low-precision engine's would."""

    name = "openvino"
    precision = "bf16"

    def __init__(self, inner, shift: float = 50.0) -> None:
        self.inner, self.shift, self.closed = inner, shift, False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.inner(x).copy()
        y[:, 1, :, : y.shape[3] // 2] += self.shift
        return y

    def close(self) -> None:
        self.closed = True
        self.inner.close()


# --- the backend -------------------------------------------------------------------------------


def test_logits_match_onnxruntime_and_masks_identical(ov_backend, ort_backend, batch) -> None:
    got, ref = ov_backend(batch), ort_backend(batch)
    assert got.shape == ref.shape == (2, 2, 256, 256) and got.dtype == np.float32
    assert float(np.max(np.abs(got - ref))) <= 1e-4
    assert np.array_equal(P.class1_masks(got), P.class1_masks(ref))
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert ov_backend.name == "openvino" and ov_backend.precision == "fp32" and ov_backend.device == "cpu"
    assert ov_backend.member == "member0.onnx"
    assert ort_backend.precision == "fp32"  # every backend declares its precision (base default)


def test_threads_and_shape_cache(ov) -> None:
    b = ovb.OpenVinoBackend(DEFAULT_BUNDLE / "member0.onnx", intra_op_threads=1, max_shapes=2)
    try:
        assert b.threads == 1 and b._config["INFERENCE_NUM_THREADS"] == 1
        compiled, _ = next(iter(b._compiled.values()))
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        x32, x48 = np.zeros((1, 1, 32, 32), np.float32), np.zeros((2, 1, 48, 64), np.float32)
        n0 = b.compilations
        b(x32), b(x32)
        assert b.compilations == n0 + 1  # one compilation per new shape, reused after
        assert b(x48).shape == (2, 2, 48, 64)
        assert len(b._compiled) == 2  # the (1, 1, 16, 16) precision probe was dropped (LRU, max 2)
    finally:
        b.close()
    b.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        b(np.zeros((1, 1, 32, 32), np.float32))


def test_dynamic_mode_equals_static(ov, ov_backend, batch) -> None:
    d = ovb.OpenVinoBackend(DEFAULT_BUNDLE / "member0.onnx", intra_op_threads=1, shapes="dynamic")
    try:
        assert float(np.max(np.abs(d(batch) - ov_backend(batch)))) <= 1e-5
        assert d.compilations == 1
    finally:
        d.close()


def test_bad_arguments(ov) -> None:
    onnx = DEFAULT_BUNDLE / "member0.onnx"
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        ovb.OpenVinoBackend(onnx, device="cuda")
    with pytest.raises(ValueError, match="precision must be one of"):
        ovb.OpenVinoBackend(onnx, precision="int4")
    with pytest.raises(FileNotFoundError):
        ovb.OpenVinoBackend(DEFAULT_BUNDLE / "missing.onnx")


def test_non_native_precision_is_refused_or_runs(ov) -> None:
    info = ovb.openvino_cpu_info()
    for prec, cap in (("bf16", "BF16"), ("fp16", "FP16")):
        if cap in info["capabilities"]:
            b = ovb.OpenVinoBackend(DEFAULT_BUNDLE / "member0.onnx", precision=prec, intra_op_threads=1)
            assert b.precision == prec  # read back from the compiled model
            b.close()
        else:
            with pytest.raises(ovb.PrecisionUnavailable, match=f"no native {prec.upper()}") as e:
                ovb.OpenVinoBackend(DEFAULT_BUNDLE / "member0.onnx", precision=prec)
            assert e.value.kind == "openvino" and e.value.precision == prec
            assert info["cpu"] in e.value.reason


def test_import_guard_names_kind_and_reason(monkeypatch) -> None:
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(BackendUnavailable) as e:
        ovb._import_openvino()
    assert e.value.kind == "openvino" and "pip install openvino" in e.value.reason


# --- the precision gate ------------------------------------------------------------------------


def test_precision_record_on_verification_tiles(ov_backend, ort_backend) -> None:
    tiles, source = P.verification_tiles(DEFAULT_BUNDLE, fallback_n=2, fallback_side=256)
    assert source == "bundle:verification_tiles.npy" and tiles.shape == (2, 1, 512, 512) and tiles.dtype == np.float32
    result = P.check_parity(ort_backend, ov_backend, tiles, batch_size=1)
    assert result.passed and result.argmax_agreement == 1.0 and result.dice == 1.0
    rec = P.engine_record(kind="openvino", precision="fp32", member="member0.onnx", result=result,
                          versions={"openvino": ov_backend.info["openvino"]}, cpu=P.cpu_model(), tiles=source)
    assert rec["kind"] == "openvino" and rec["passed"] is True and rec["cpu"]
    assert set(rec) >= {"kind", "member", "precision", "versions", "cpu", "argmax_agreement", "dice",
                        "max_abs_diff_vs_fp32", "min_argmax_agreement", "min_dice", "verification_tiles", "passed"}
    assert rec["min_argmax_agreement"] == 0.999 and rec["min_dice"] == 0.995


def test_fallback_to_fp32_when_parity_fails(ov, caplog) -> None:
    built = {}

    def build(prec: str):
        b = create_backend("openvino", str(DEFAULT_BUNDLE), intra_op_threads=1)
        built[prec] = Perturbed(b) if prec != "fp32" else b
        return built[prec]

    tiles = P.synthetic_tiles(2, 128, seed=2)
    with caplog.at_level(logging.INFO, logger="fringelive.engine.precision"):
        backend, reason, record = P.choose_precision(build, "bf16", member="member0.onnx", tiles=tiles,
                                                     tiles_source="synthetic", runtime_version="test")
    try:
        assert backend is built["fp32"] and backend.precision == "fp32"
        assert built["bf16"].closed
        assert "failed parity" in reason and "falling back to fp32" in reason
        assert record is not None and record["passed"] is False and record["dice"] < 0.995
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and "falling back to fp32" in r.getMessage()]
        assert warned, caplog.text
    finally:
        backend.close()


def test_non_fp32_used_when_parity_passes(ov) -> None:
    def build(prec: str):  # an exact "bf16" stand-in: FP32 OpenVINO under the other label
        b = create_backend("openvino", str(DEFAULT_BUNDLE), intra_op_threads=1)
        return b if prec == "fp32" else Perturbed(b, shift=0.0)

    backend, reason, record = P.choose_precision(build, "bf16", member="member0.onnx",
                                                 tiles=P.synthetic_tiles(1, 128), tiles_source="synthetic")
    assert isinstance(backend, Perturbed) and "parity with fp32 passed" in reason and record["passed"]
    backend.inner.close()


def test_fallback_when_precision_unavailable_and_card_records() -> None:
    """Pure policy: no OpenVINO needed."""

    class Fake:
        def __init__(self, prec: str) -> None:
            self.precision, self.closed = prec, False

        def __call__(self, x):
            raise AssertionError("no check may run when the card decides")

        def close(self) -> None:
            self.closed = True

    def unavailable(prec: str):
        if prec != "fp32":
            raise ovb.PrecisionUnavailable("openvino", prec, "this CPU has no native BF16")
        return Fake(prec)

    tiles = np.zeros((1, 1, 16, 16), np.float32)
    b, reason, _ = P.choose_precision(unavailable, "bf16", member="m.onnx", tiles=tiles, tiles_source="t",
                                      unavailable=ovb.PrecisionUnavailable)
    assert b.precision == "fp32" and "no native BF16" in reason and "falling back to fp32" in reason
    rec = {"kind": "openvino", "precision": "bf16", "member": "m.onnx", "cpu": "CPU X", "versions": {"openvino": "1.0"},
           "argmax_agreement": 0.9999, "dice": 0.999, "passed": True}
    b, reason, got = P.choose_precision(Fake, "bf16", member="m.onnx", tiles=tiles, tiles_source="t",
                                        recorded=[rec], cpu="CPU X", runtime_version="1.0")
    assert b.precision == "bf16" and "card's parity record passed" in reason and got == rec
    b, reason, _ = P.choose_precision(Fake, "bf16", member="m.onnx", tiles=tiles, tiles_source="t",
                                      recorded=[{**rec, "passed": False}], cpu="CPU X", runtime_version="1.0")
    assert b.precision == "fp32" and "failed parity in the card" in reason


def test_parity_numbers() -> None:
    ref = np.zeros((1, 2, 10, 10), np.float32)
    ref[:, 1, :5] = 5.0  # top half particle
    assert P.compare_logits(ref, ref).passed
    got = ref.copy()
    got[0, 1, 0, 0] = -5.0  # one pixel of 100 flips
    r = P.compare_logits(got, ref)
    assert r.argmax_agreement == pytest.approx(0.99) and not r.passed
    assert P.dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert not P.compare_logits(ref, np.full_like(ref, np.nan)).passed


# --- backend = "auto" ----------------------------------------------------------------------------


def test_auto_picks_fastest_verified_and_logs_reason(ov, caplog) -> None:
    from fringelive.engine.backends.auto import resolve_auto_for_bundle

    bundle = load_bundle(DEFAULT_BUNDLE)
    with caplog.at_level(logging.INFO, logger="fringelive.engine.backends.auto"):
        choice = resolve_auto_for_bundle(bundle, intra_op_threads=1, side=128, calls=2)
    assert choice.kind in ("openvino", "onnxruntime")
    assert set(choice.timings_ms) == {"openvino", "onnxruntime"}
    assert choice.kind == min(choice.timings_ms, key=choice.timings_ms.get)
    assert "onnxruntime-cuda" in choice.skipped or "onnxruntime-cuda" in choice.timings_ms
    assert any("backend auto -> " + choice.kind in r.getMessage() for r in caplog.records), caplog.text
    cpu_only = resolve_auto_for_bundle(bundle, intra_op_threads=1, device="cpu", side=64, calls=1)
    assert set(cpu_only.timings_ms) == {"openvino", "onnxruntime"} and not cpu_only.skipped


def test_auto_skips_unverified_and_unavailable(ov) -> None:
    from fringelive.engine.backends.auto import resolve_auto

    def build(kind: str):
        if kind == "onnxruntime-cuda":
            raise BackendUnavailable(kind, "no GPU here")
        b = create_backend(kind, str(DEFAULT_BUNDLE), intra_op_threads=1)
        return Perturbed(b) if kind == "openvino" else b

    choice = resolve_auto(build, candidates=("onnxruntime-cuda", "openvino", "onnxruntime"), side=64, calls=1)
    assert choice.kind == "onnxruntime"
    assert "differs from onnxruntime" in choice.skipped["openvino"]
    assert choice.skipped["onnxruntime-cuda"] == "no GPU here"
    assert "skipped: onnxruntime-cuda (no GPU here)" in choice.reason

    with pytest.raises(BackendUnavailable, match="no backend is installed and verified"):
        resolve_auto(lambda k: (_ for _ in ()).throw(BackendUnavailable(k, "absent")), candidates=("openvino",))


def test_create_serving_backends_auto_and_precision(ov) -> None:
    from fringelive.engine.backends.auto import create_serving_backends

    bundle = load_bundle(DEFAULT_BUNDLE)
    backends, reason = create_serving_backends("auto", bundle, intra_op_threads=1)
    try:
        assert len(backends) == 1 and backends[0].precision == "fp32" and "backend auto -> " in reason
    finally:
        for b in backends:
            b.close()
    backends, reason = create_serving_backends("openvino", bundle, intra_op_threads=1, precision="bf16")
    try:
        b = backends[0]
        if "BF16" in ovb.openvino_cpu_info()["capabilities"]:
            assert "parity" in reason  # the check ran on the bundle's verification tiles; fp32 only if it failed
            assert b.precision == ("bf16" if "passed" in reason else "fp32")
        else:
            assert b.precision == "fp32" and "falling back to fp32" in reason and "no native BF16" in reason
    finally:
        for b in backends:
            b.close()


# --- the whole pipeline: auto / openvino FP32 masks vs ONNX Runtime's ----------------------------


def test_pipeline_masks_auto_and_openvino_equal_onnxruntime(ov) -> None:
    """Acceptance (issue #14): FP32 masks of ``openvino`` and of the default ``auto`` equal ONNX
    Runtime's on >= 99.99 % of pixels, on the golden test's fast-simulator frames (384²)."""
    from fringelive.engine.backends.auto import create_serving_backends
    from fringelive.engine.pipeline import SegmentationPipeline
    from fringelive.training.fastsim import FastSimConfig, simulate_frame

    bundle = load_bundle(DEFAULT_BUNDLE)
    frames = [simulate_frame(FastSimConfig(shape=(384, 384)), seed)[0] for seed in (0, 1)]

    def masks(kind: str) -> list[np.ndarray]:
        backends, _ = create_serving_backends(kind, bundle, intra_op_threads=1)
        pipeline = SegmentationPipeline(bundle, backends)
        try:
            return [pipeline.run(f, {}).mask for f in frames]
        finally:
            pipeline.close()

    ref = masks("onnxruntime")
    for kind in ("openvino", "auto"):
        for r, m in zip(ref, masks(kind)):
            assert m.shape == r.shape and float(np.mean(m == r)) >= 0.9999, kind


# --- the card's engines: `fringelive export openvino` --------------------------------------------


def test_export_openvino_records_parity_in_card(ov, tmp_path, capsys) -> None:
    import shutil

    from fringelive.bundle.card import CardError, Engine
    from fringelive.cli import main

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle_dir, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    bf16 = "BF16" in ovb.openvino_cpu_info()["capabilities"]
    rc = main(["export", "openvino", "--bundle", str(bundle_dir), "--precision", "bf16", "--threads", "1"])
    assert rc == (0 if bf16 else 2)
    if not bf16:
        assert "no native BF16" in capsys.readouterr().err
    # the writer itself, on a precision every CPU runs
    assert main(["export", "openvino", "--bundle", str(bundle_dir), "--precision", "fp32", "--threads", "1"]) == 0
    assert "passed" in capsys.readouterr().out
    engines = load_bundle(bundle_dir).card.engines
    recs = [e for e in engines if e.kind == "openvino" and e.precision == "fp32"]
    assert len(recs) == 1 and recs[0].passed and recs[0].dice == 1.0 and recs[0].file is None
    assert recs[0].verification_tiles == "bundle:verification_tiles.npy" and recs[0].versions["openvino"]
    found = P.find_record([vars(e) for e in engines], kind="openvino", precision="fp32", member="member0.onnx",
                          cpu=recs[0].cpu, runtime_version=recs[0].versions["openvino"])
    assert found is not None and found["passed"]
    main(["export", "openvino", "--bundle", str(bundle_dir), "--precision", "fp32", "--threads", "1"])
    assert len([e for e in load_bundle(bundle_dir).card.engines if e.kind == "openvino"]) == len(recs) + bf16  # replaced
    with pytest.raises(CardError, match=r"tensorrt engine of member 'member0.onnx' needs \['file'"):
        Engine(member="member0.onnx", precision="fp16")


def test_serve_backend_and_precision_options() -> None:
    """``serve --backend/--precision`` override ``[model]``; a bad value fails fast naming it."""
    from fringelive.cli import build_parser
    from fringelive.cli.serve import build_config
    from fringelive.daemon.config import ConfigError, DaemonConfig

    assert DaemonConfig().model.backend == "auto" and DaemonConfig().model.precision == "fp32"

    def config(*extra: str):
        argv = ["serve", *extra]
        return build_config(build_parser(argv).parse_args(argv))

    cfg = config("--backend", "openvino", "--precision", "bf16")
    assert cfg.model.backend == "openvino" and cfg.model.precision == "bf16"
    assert config().model.backend == "auto"
    with pytest.raises(ConfigError, match=r"model.precision must be one of \['fp32', 'bf16', 'fp16'\], got 'bf17'"):
        config("--precision", "bf17")
    with pytest.raises(ConfigError, match=r"model.backend must be one of \['auto', .*'openvino'.*got 'openvno'"):
        config("--backend", "openvno")
