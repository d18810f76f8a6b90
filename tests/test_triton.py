"""Triton offload: ``fringelive export triton`` writes a valid model repository; a REAL Triton
Inference Server (the ``tritonserver`` nvidia-pytriton bundles, python backend) serves it on a
loopback port; the ``triton`` backend, a pipeline and a daemon using it give what ONNX Runtime
gives locally.

The repository checks parse ``config.pbtxt`` with Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``). Server tests skip when tritonclient or the server
binary is missing (``make install`` installs both). One server per session (~3 s to start),
stopped at the end with its python-backend stubs.
"""

from __future__ import annotations

import ast
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import msgpack
import numpy as np
import pytest

from fringelive.engine.backends import BackendUnavailable, TritonRequestError, create_backend, create_backends
from fringelive.daemon.config import ConfigError, DaemonConfig, ModelConfig, load_config
from fringelive.bundle.bundle_io import Bundle, sha256_file, write_bundle
from fringelive.bundle.card import Card
from fringelive.export.triton_export import (
    INDEX_SUFFIX,
    TritonExportError,
    default_model_prefix,
    export_triton,
    model_name,
)
from fringelive.export.triton_server import LocalTritonServer, TritonServerError, find_tritonserver

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _tritonclient_missing() -> str | None:
    try:
        import tritonclient.http  # noqa: F401
    except ImportError as e:
        return f"tritonclient is not installed ({e}); pip install 'fringelive[triton]'"
    return None


def _server_missing() -> str | None:
    install = find_tritonserver()
    if install is None:
        return "no tritonserver binary: pip install --no-deps nvidia-pytriton==0.7.0 (make install does)"
    if install.stub is None:
        return "nvidia-pytriton has no python backend stub for this Python version"
    return None


needs_client = pytest.mark.skipif(_tritonclient_missing() is not None, reason=str(_tritonclient_missing()))
needs_server = pytest.mark.skipif(_server_missing() is not None or _tritonclient_missing() is not None,
                                  reason=str(_server_missing() or _tritonclient_missing()))


def parse_config(path: Path) -> Any:
    """``config.pbtxt`` parsed strictly into Triton's ``inference.ModelConfig`` message."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient (with its protobuf model config) is not installed")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def two_member_bundle(bundle: Bundle, out: Path) -> Bundle:
    """``bundle``'s network twice (members 0 and 1): exercises the per-member model names."""
    import dataclasses

    card = bundle.card
    m = card.members[0]
    members = (m, dataclasses.replace(m, file="member1.onnx"))  # write_bundle fills in names and sha256
    return write_bundle(out, card.replace(members=members), [bundle.member_paths[0]] * 2)


def other_bundle(bundle: Bundle, out: Path) -> Bundle:
    """The same network under another name with a different member sha256 (another ONNX
    doc_string): Triton must not pass it off as ``bundle``'s member."""
    import onnx

    model = onnx.load(str(bundle.member_paths[0]))
    model.doc_string = "another export"
    onnx_path = out.parent / "other.onnx"
    onnx.save(model, str(onnx_path))
    return write_bundle(out, bundle.card.replace(name="other bundle"), [onnx_path])


# --- the repository ------------------------------------------------------------------------------


@needs_client
def test_onnxruntime_repository_is_a_valid_triton_model_config(tiny_bundle: Bundle, tmp_path: Path) -> None:
    two = two_member_bundle(tiny_bundle, tmp_path / "two")
    out = export_triton(two, tmp_path / "repo", max_batch=4, instances=2, kind="gpu", queue_delay_us=100,
                        intra_op_threads=2)
    assert out.models == ("tiny-resunet-seed_m0", "tiny-resunet-seed_m1") and out.platform == "onnxruntime"
    for i, name in enumerate(out.models):
        cfg = parse_config(out.repository / name / "config.pbtxt")
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.backend == ""
        assert cfg.max_batch_size == 4
        (inp,), (outp,) = cfg.input, cfg.output
        assert (inp.name, list(inp.dims)) == ("image", [1, -1, -1])
        assert (outp.name, list(outp.dims)) == ("logits", [2, -1, -1])
        assert inp.data_type == outp.data_type == 1 + 10  # TYPE_FP32 (enum value 11)
        assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 100
        (group,) = cfg.instance_group
        assert group.count == 2 and group.kind == 1  # KIND_GPU
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        member = two.card.members[i]
        assert params == {"fringelive_bundle": "tiny-resunet-seed", "fringelive_member": member.file,
                          "fringelive_member_sha256": member.sha256, "intra_op_thread_count": "2"}
        assert sha256_file(out.repository / name / "1" / "model.onnx") == member.sha256
        assert not (out.repository / name / "1" / "model.py").exists()
    index = json.loads(out.index.read_text())
    assert out.index.name == "tiny-resunet-seed" + INDEX_SUFFIX
    assert [m["name"] for m in index["models"]] == list(out.models)
    assert index["models"][0]["input"] == {"name": "image", "data_type": "TYPE_FP32", "dims": [1, -1, -1]}
    assert Card.from_dict(index["card"]) == two.card
    # kind auto: no kind in the group (Triton's KIND_AUTO: GPU when there is one)
    auto = export_triton(tiny_bundle, tmp_path / "auto")
    cfg = parse_config(auto.repository / auto.models[0] / "config.pbtxt")
    assert cfg.instance_group[0].kind == 0 and cfg.instance_group[0].count == 1
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0 and cfg.max_batch_size == 8


@needs_client
def test_python_platform_repository(tiny_bundle: Bundle, tmp_path: Path) -> None:
    out = export_triton(tiny_bundle, tmp_path / "repo", platform="python", kind="cpu", prefix="tiny")
    assert out.models == ("tiny_m0",)
    cfg = parse_config(out.repository / "tiny_m0" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.platform == "" and cfg.instance_group[0].kind == 2  # KIND_CPU
    source = (out.repository / "tiny_m0" / "1" / "model.py").read_text()
    ast.parse(source)
    assert "class TritonPythonModel" in source and "model.onnx" in source
    assert sha256_file(out.repository / "tiny_m0" / "1" / "model.onnx") == tiny_bundle.card.members[0].sha256


@needs_client
def test_bundle_name_outside_the_model_name_alphabet(tiny_bundle: Bundle, tmp_path: Path) -> None:
    named = write_bundle(tmp_path / "b", tiny_bundle.card.replace(name='Au µ-5nm "x"'), tiny_bundle.member_paths)
    out = export_triton(named, tmp_path / "repo")
    assert out.models == ("Au__-5nm__x__m0",)  # prefix "Au__-5nm__x_"
    cfg = parse_config(out.repository / out.models[0] / "config.pbtxt")
    assert cfg.parameters["fringelive_bundle"].string_value == 'Au µ-5nm "x"'


def test_export_refusals_and_replacement(tiny_bundle: Bundle, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    two = two_member_bundle(tiny_bundle, tmp_path / "two")
    export_triton(two, repo)
    with pytest.raises(TritonExportError, match=r"already holds models \['tiny-resunet-seed_m0', 'tiny-resunet-seed_m1'\]"):
        export_triton(tiny_bundle, repo)
    export_triton(tiny_bundle, repo, overwrite=True)  # one member now: the stale _m1 goes
    assert sorted(p.name for p in repo.iterdir()) == ["tiny-resunet-seed.fringelive.json", "tiny-resunet-seed_m0"]
    export_triton(tiny_bundle, repo, prefix="second")  # another prefix shares the repository
    assert (repo / "second_m0" / "config.pbtxt").is_file() and (repo / "tiny-resunet-seed_m0").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(TritonExportError, match="prefix must be non-empty.*got 'a b'"):
        export_triton(tiny_bundle, repo, prefix="a b")
    with pytest.raises(TritonExportError, match=r"platform must be one of \['onnxruntime', 'python'\], got 'tf'"):
        export_triton(tiny_bundle, repo, platform="tf")
    with pytest.raises(TritonExportError, match="kind must be one of"):
        export_triton(tiny_bundle, repo, kind="tpu")
    with pytest.raises(TritonExportError, match="max_batch must be an integer >= 1, got 0"):
        export_triton(tiny_bundle, tmp_path / "r2", max_batch=0)
    with pytest.raises(TritonExportError, match="intra_op_threads must be an integer >= 1 or None, got 0"):
        export_triton(tiny_bundle, tmp_path / "r3", intra_op_threads=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TritonExportError, match="exists and is not a directory"):
        export_triton(tiny_bundle, tmp_path / "file")


def test_model_names() -> None:
    assert default_model_prefix("au-5nm-0.020nm-423e") == "au-5nm-0.020nm-423e"
    assert default_model_prefix("Au 5nm/x") == "Au_5nm_x"
    assert default_model_prefix(".hidden") == "_.hidden"
    assert model_name("au", 3) == "au_m3"
    with pytest.raises(ValueError, match="member index must be an integer >= 0, got -1"):
        model_name("au", -1)


def test_cli_export_triton(tiny_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main

    repo = tmp_path / "repo"
    assert main(["export", "triton", "--bundle", str(tiny_bundle.path), "--out", str(repo), "--platform", "python",
                 "--kind", "cpu", "--max-batch", "2", "--name", "au"]) == 0
    assert "1 Triton model(s) (python)" in capsys.readouterr().out
    assert "max_batch_size: 2" in (repo / "au_m0" / "config.pbtxt").read_text()
    assert main(["export", "triton", "--bundle", str(tiny_bundle.path), "--out", str(repo), "--name", "au"]) == 2
    assert "already holds models ['au_m0']" in capsys.readouterr().err
    assert main(["export", "triton", "--bundle", str(tiny_bundle.path), "--out", str(repo), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1, got 0" in capsys.readouterr().err
    assert main(["export", "triton", "--bundle", str(tmp_path / "nope"), "--out", str(repo)]) == 1
    assert "not a directory" in capsys.readouterr().err


# --- configuration -------------------------------------------------------------------------------


def test_model_config_triton_keys(tmp_path: Path) -> None:
    cfg = ModelConfig(backend="triton", triton_url="https://triton.lab:8443/", triton_timeout_s=5)
    assert cfg.backend_options() == {"triton_url": "https://triton.lab:8443/", "triton_model_prefix": None,
                                     "triton_timeout_s": 5.0}
    assert ModelConfig().backend_options() == {}
    for kwargs, message in [
        ({"triton_url": "tcp://127.0.0.1:8001"}, "model.triton_url must look like http://HOST:PORT.*got 'tcp://"),
        ({"triton_url": "http://127.0.0.1:70000"}, "model.triton_url must look like"),
        ({"triton_timeout_s": 0}, r"model.triton_timeout_s must be a number of seconds in \(0, 3600\], got 0"),
        ({"triton_model_prefix": "a/b"}, "model.triton_model_prefix must be non-empty.*got 'a/b'"),
        ({"backend": "triton", "device": "cuda:0"}, 'model.device must be "auto" with backend "triton".*got \'cuda:0\''),
    ]:
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**kwargs)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="model.triton_model_prefix .* several bundles are configured"):
        ModelConfig(bundle=tmp_path / "a", bundles=(tmp_path / "b",), triton_model_prefix="x")
    toml = tmp_path / "d.toml"
    toml.write_text('[model]\nbackend = "triton"\ntriton_url = "http://10.0.0.5:8000"\n'
                    'triton_model_prefix = "au"\ntriton_timeout_s = 2.5\n')
    m = load_config(toml).model
    assert (m.backend, m.triton_url, m.triton_model_prefix, m.triton_timeout_s) == ("triton", "http://10.0.0.5:8000", "au", 2.5)
    toml.write_text('[model]\ntriton_timeout_s = "soon"\n')
    with pytest.raises(ConfigError, match="model.triton_timeout_s must be a number, got 'soon'"):
        load_config(toml)


@needs_client
def test_unreachable_server_and_argument_errors(tiny_bundle: Bundle, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(BackendUnavailable, match=f"backend 'triton' is not available: the Triton server at {url} "
                                                 "is unreachable") as info:
        create_backend("triton", tiny_bundle, triton_url=url, triton_timeout_s=2)
    assert info.value.kind == "triton"
    with pytest.raises(ValueError, match="Triton URL must look like http://HOST:PORT.*got 'grpc://h:1'"):
        create_backend("triton", tiny_bundle, triton_url="grpc://h:1")
    with pytest.raises(ValueError, match="device must be None.*got 'cpu'"):
        create_backend("triton", tiny_bundle, device="cpu", triton_url=url)
    with pytest.raises(ValueError, match="backend 'triton' needs a bundle"):
        create_backend("triton", tiny_bundle.member_paths[0], triton_url=url)
    with pytest.raises(ValueError, match="timeout_s must be a number of seconds > 0, got 0"):
        create_backend("triton", tiny_bundle, triton_url=url, triton_timeout_s=0)


# --- a real Triton server --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def triton(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTritonServer]:
    """A tritonserver on 127.0.0.1 serving ``tiny_bundle`` (python backend, CPU, max batch 4)
    and the "other bundle" (same network, other sha256) under prefix ``other``."""
    reason = _server_missing() or _tritonclient_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("triton")
    repo = root / "repo"
    export_triton(tiny_bundle, repo, platform="python", kind="cpu", max_batch=4, intra_op_threads=1)
    export_triton(other_bundle(tiny_bundle, root / "other"), repo, platform="python", kind="cpu", prefix="other",
                  intra_op_threads=1)
    server = LocalTritonServer(repo, log_path=root / "tritonserver.log")
    with server:
        yield server
    assert server.pid is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_server
def test_triton_backend_equals_onnxruntime(triton: LocalTritonServer, tiny_bundle: Bundle) -> None:
    rng = np.random.default_rng(0)
    with create_backend("triton", tiny_bundle, triton_url=triton.url) as tb, \
            create_backend("onnxruntime", tiny_bundle, intra_op_threads=1) as ob:
        assert tb.name == "triton" and tb.device == triton.url and tb.member == tiny_bundle.card.members[0].file
        assert tb.model == "tiny-resunet-seed_m0" and tb.max_batch_size == 4
        assert tb.served_sha256 == tiny_bundle.card.members[0].sha256
        # 9 tiles > max_batch_size 4: three requests; other shapes; one tile
        for shape in [(9, 1, 64, 64), (2, 1, 96, 160), (1, 1, 128, 128)]:
            x = rng.standard_normal(shape).astype(np.float32)
            y = tb(x)
            assert y.shape == (shape[0], 2, *shape[2:]) and y.dtype == np.float32 and y.flags.writeable
            np.testing.assert_allclose(y, ob(x), rtol=0, atol=1e-5)
        tb.max_request_bytes = 64 * 64 * 4 * 2  # two tiles per request by size
        x = rng.standard_normal((5, 1, 64, 64)).astype(np.float32)
        np.testing.assert_allclose(tb(x), ob(x), rtol=0, atol=1e-5)
    assert tb.closed


@needs_server
def test_backend_built_in_one_thread_runs_in_another(triton: LocalTritonServer, tiny_bundle: Bundle) -> None:
    """The daemon builds backends in its main thread and runs them in the worker thread."""
    (tb,) = create_backends("triton", tiny_bundle, triton_url=triton.url)
    x = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
    got: list[Any] = []
    workers = [threading.Thread(target=lambda: got.append(tb(x))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    tb.close()
    assert len(got) == 3 and all(np.array_equal(g, got[0]) for g in got)


@needs_server
def test_missing_model_and_foreign_network_are_refused(triton: LocalTritonServer, tiny_bundle: Bundle) -> None:
    with pytest.raises(BackendUnavailable, match=r"model 'nope_m0' is not ready on the Triton server at "
                       + triton.url + r" \(models there: \['other_m0', 'tiny-resunet-seed_m0'\]\)"):
        create_backend("triton", tiny_bundle, triton_url=triton.url, triton_model_prefix="nope")
    with pytest.raises(BackendUnavailable, match="model 'other_m0' on the Triton server at .* serves a network with "
                       "sha256 [0-9a-f]{64}, but the local bundle's member has " + tiny_bundle.card.members[0].sha256):
        create_backend("triton", tiny_bundle, triton_url=triton.url, triton_model_prefix="other")


@needs_server
def test_pipeline_with_triton_equals_onnxruntime(triton: LocalTritonServer, tiny_bundle: Bundle) -> None:
    from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline

    frame = np.random.default_rng(3).poisson(100.0, (200, 256)).astype(np.uint16)
    config = PipelineConfig(tile_size=64, batch_size=4)  # 64 px tiles + halos: several batches of tiles
    with SegmentationPipeline.from_bundle(tiny_bundle, config, kind="triton", triton_url=triton.url) as remote, \
            SegmentationPipeline.from_bundle(tiny_bundle, config, intra_op_threads=1) as local:
        a = remote.run(frame, {"pixel_size_nm": 0.02})
        b = local.run(frame, {"pixel_size_nm": 0.02})
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-5)


def _daemon_results(config: DaemonConfig, frames: list[np.ndarray]) -> list[tuple[dict, np.ndarray, Any]]:
    """Serve ``frames`` through a daemon on loopback ports; their results in order."""
    import zmq

    from fringelive.daemon.protocol import decode_error, decode_result, encode_frame
    from fringelive.daemon.server import Daemon

    ctx = zmq.Context.instance()
    with Daemon(config) as d:
        sub = ctx.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        push = ctx.socket(zmq.PUSH)
        push.connect(d.endpoints["ingest"])
        try:
            t_end = time.monotonic() + 10.0  # slow joiner: junk (rejected) until its error event arrives
            synced = False
            i = 0
            while not synced:
                assert time.monotonic() < t_end, "the subscriber never saw the daemon's events"
                i += 1
                push.send_multipart([msgpack.packb({"version": 1, "series": "sync", "frame": i}), b""])
                while sub.poll(200):
                    parts = sub.recv_multipart()
                    if parts[0] == b"error" and decode_error(parts).get("frame") == i:
                        synced = True
            for k, f in enumerate(frames):
                push.send_multipart(encode_frame(f, series="t", frame=k, pixel_size_nm=0.02))
            results = []
            while len(results) < len(frames):
                assert sub.poll(60_000), f"got {len(results)} of {len(frames)} results"
                parts = sub.recv_multipart()
                if parts[0] == b"result":
                    results.append(decode_result(parts))
                else:
                    raise AssertionError(f"error event: {decode_error(parts)}")
        finally:
            push.close(linger=0)
            sub.close(linger=0)
    return sorted(results, key=lambda r: r[0]["frame"])


@needs_server
def test_daemon_with_triton_backend_equals_onnxruntime(triton: LocalTritonServer, tiny_bundle: Bundle) -> None:
    base = {
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0",
                                                                 "publish_probabilities": True},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "pipeline": {"tile_size": 64, "batch_size": 4},
    }
    frames = [np.random.default_rng(10 + k).poisson(100.0, (128, 192)).astype(np.uint16) for k in range(3)]
    local = _daemon_results(DaemonConfig.from_dict(
        {**base, "model": {"bundle": str(tiny_bundle.path), "backend": "onnxruntime", "intra_op_threads": 1}}), frames)
    remote = _daemon_results(DaemonConfig.from_dict(
        {**base, "model": {"bundle": str(tiny_bundle.path), "backend": "triton", "triton_url": triton.url,
                           "triton_timeout_s": 30.0}}), frames)
    for (ha, ma, pa), (hb, mb, pb) in zip(local, remote):
        assert ha["frame"] == hb["frame"] and ha["model"] == hb["model"] == tiny_bundle.name
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(pa, pb)  # float16 probabilities, bit for bit
        assert ha["particle_count"] == hb["particle_count"]


@needs_server
def test_server_gone_fails_the_request_not_the_backend(tiny_bundle: Bundle, tmp_path: Path) -> None:
    """A request to a stopped server raises TritonRequestError naming the model and URL; the
    local server leaves no process behind."""
    export_triton(tiny_bundle, tmp_path / "repo", platform="python", kind="cpu", intra_op_threads=1)
    server = LocalTritonServer(tmp_path / "repo").start()
    pid = server.pid
    assert pid is not None and _alive(pid)
    tb = create_backend("triton", tiny_bundle, triton_url=server.url, triton_timeout_s=5)
    x = np.zeros((1, 1, 64, 64), np.float32)
    assert tb(x).shape == (1, 2, 64, 64)
    url = server.url
    server.close()
    assert not _alive(pid)
    with pytest.raises(TritonRequestError, match=f"Triton model 'tiny-resunet-seed_m0' at {url}: request failed"):
        tb(x)
    tb.close()


@needs_server
def test_local_server_reports_a_model_that_cannot_load(tmp_path: Path) -> None:
    bad = tmp_path / "repo" / "broken_m0"
    (bad / "1").mkdir(parents=True)
    (bad / "config.pbtxt").write_text('name: "broken_m0"\nbackend: "python"\nmax_batch_size: 1\n')
    (bad / "1" / "model.py").write_text("raise ImportError('no such thing')\n")
    server = LocalTritonServer(tmp_path / "repo", ready_timeout_s=60)
    with pytest.raises(TritonServerError, match=r"(?s)tritonserver exited with code 1 .*"
                       r"broken_m0 \| 1 +\| UNAVAILABLE: Internal: ImportError: no such thing"):
        server.start()
    assert server.pid is None
