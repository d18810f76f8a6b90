"""A bundle as an NVIDIA Triton Inference Server model repository (``fringelive export triton``).

One Triton model per ensemble member, named ``<prefix>_m<i>`` (``i``: the member's index in the
card; ``prefix``: by default the bundle name with characters outside ``[A-Za-z0-9_.-]`` replaced
by ``_``)::

    REPO/
      <prefix>.fringelive.json          index: models, member sha256, and the bundle's card
      <prefix>_m0/config.pbtxt          platform "onnxruntime_onnx" (or backend "python")
      <prefix>_m0/1/model.onnx          byte copy of the member (sha256 checked against the card)
      <prefix>_m0/1/model.py            only with platform "python": runs model.onnx with onnxruntime
      <prefix>_m1/...

Tensors: input ``(N, 1, H, W)`` float32 → output ``(N, C, H, W)`` float32 logits; in
``config.pbtxt`` the batch dimension is implicit (``max_batch_size`` > 0, ``dynamic_batching``)
and the rest comes from the ONNX file: ``dims: [1, -1, -1]`` → ``[C, -1, -1]``. Triton's dynamic
batcher merges requests whose H and W are equal, so tile batches of several daemons with the
same tile size share one network call.

Every ``config.pbtxt`` carries ``parameters`` ``fringelive_bundle``, ``fringelive_member`` and
``fringelive_member_sha256``: the ``triton`` backend (``engine/backends/triton.py``) refuses a model
whose sha256 differs from the member in the local card, so the daemon's preprocessing and tiling
(read from the local bundle) always match the network Triton serves. Files at the top of a
repository are not models: Triton ignores the ``.fringelive.json`` index. Several bundles may
share one repository under different prefixes.

:class:`LocalTritonServer` runs the ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles
(python backend only: export with ``platform="python"``) on a loopback port, for tests,
benchmarks and CPU hosts. See ``docs/triton.md``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fringelive.bundle.bundle_io import Bundle, BundleError, load_bundle, sha256_file
from fringelive.bundle.triton_names import TritonExportError, check_prefix, default_model_prefix, model_name

__all__ = [
    "PLATFORMS",
    "INSTANCE_KINDS",
    "INDEX_SUFFIX",
    "TritonExportError",
    "TensorSpec",
    "TritonExport",
    "default_model_prefix",
    "model_name",
    "onnx_io",
    "model_config_text",
    "python_model_source",
    "export_triton",
]

#: ``onnxruntime``: Triton's onnxruntime backend; ``python``: Triton's python backend running
#: the ONNX file with onnxruntime inside the stub (servers built without the onnxruntime backend).
PLATFORMS = ("onnxruntime", "python")
#: ``auto``: GPU instances when the server has GPUs, else CPU (Triton's KIND_AUTO).
INSTANCE_KINDS = ("auto", "cpu", "gpu")
INDEX_SUFFIX = ".fringelive.json"
INDEX_FORMAT = "fringelive-triton-repository"
INDEX_VERSION = 1

# ONNX TensorProto.DataType → Triton DataType
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 2: "TYPE_UINT8",
                   3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input/output as Triton declares it: ``dims`` without the batch dimension, -1 for
    a variable size (px)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonExport:
    """What :func:`export_triton` wrote: the repository, the prefix, one model name per member
    (in card order) and the index file."""

    repository: Path
    prefix: str
    models: tuple[str, ...]
    index: Path
    platform: str


def onnx_io(path: str | os.PathLike[str], input_name: str, output_name: str) -> tuple[TensorSpec, TensorSpec]:
    """Triton input and output declarations of an ONNX network ``(N, 1, H, W) → (N, C, H, W)``
    read from its graph (external weight files are not read). The batch dimension must be dynamic (it becomes
    Triton's implicit batch dimension); other dynamic dimensions become -1."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    specs = []
    for kind, name, values in (("input", input_name, [v for v in graph.input if v.name not in inits]),
                               ("output", output_name, list(graph.output))):
        found = [v for v in values if v.name == name]
        if not found:
            raise TritonExportError(f"{path}: the ONNX graph has no {kind} {name!r}; it has {[v.name for v in values]}")
        t = found[0].type.tensor_type
        if t.elem_type not in _ONNX_TO_TRITON:
            raise TritonExportError(f"{path}: {kind} {name!r} has ONNX element type {t.elem_type}, which Triton cannot declare")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        if len(dims) < 2:
            raise TritonExportError(f"{path}: {kind} {name!r} has rank {len(dims)}; expected (N, C, H, W)")
        if dims[0] != -1:
            raise TritonExportError(f"{path}: {kind} {name!r} has a fixed batch dimension {dims[0]}; Triton's dynamic "
                                    "batching needs a dynamic one (re-export with `fringelive export onnx`)")
        specs.append(TensorSpec(name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:])))
    return specs[0], specs[1]


def _q(s: str) -> str:
    # A protobuf text-format string literal: \" \\ \n \t escapes, UTF-8 kept as is (text format has
    # no \u escapes); other control characters do not occur in names, paths and hex digests.
    return json.dumps(s, ensure_ascii=False)


def model_config_text(name: str, *, platform: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                      max_batch: int, instances: int, kind: str, queue_delay_us: int = 0,
                      parameters: dict[str, str] | None = None, comment: str | None = None) -> str:
    """``config.pbtxt`` (Triton ``ModelConfig`` in protobuf text format) for one model.

    ``platform`` "onnxruntime" → ``platform: "onnxruntime_onnx"``, "python" → ``backend:
    "python"``; ``max_batch`` (> 0, samples per network call); ``instances`` per device;
    ``kind`` auto | cpu | gpu; ``queue_delay_us``: how long the dynamic batcher waits for more
    requests, µs; ``parameters``: string key/values readable by clients."""
    if platform not in PLATFORMS:
        raise TritonExportError(f"platform must be one of {list(PLATFORMS)}, got {platform!r}")
    if kind not in INSTANCE_KINDS:
        raise TritonExportError(f"kind must be one of {list(INSTANCE_KINDS)}, got {kind!r}")
    for label, v, lo in (("max_batch", max_batch, 1), ("instances", instances, 1), ("queue_delay_us", queue_delay_us, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise TritonExportError(f"{label} must be an integer >= {lo}, got {v!r}")
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    lines.append(f"name: {_q(name)}")
    lines.append('platform: "onnxruntime_onnx"' if platform == "onnxruntime" else 'backend: "python"')
    lines.append(f"max_batch_size: {max_batch}")
    for field, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{field} [")
        body = []
        for s in specs:
            body.append("  {\n"
                        f"    name: {_q(s.name)}\n"
                        f"    data_type: {s.data_type}\n"
                        f"    dims: [ {', '.join(str(d) for d in s.dims)} ]\n"
                        "  }")
        lines.append(",\n".join(body))
        lines.append("]")
    lines.append("dynamic_batching {" + (f"\n  max_queue_delay_microseconds: {queue_delay_us}\n" if queue_delay_us else "\n") + "}")
    kind_line = {"auto": "", "cpu": "\n    kind: KIND_CPU", "gpu": "\n    kind: KIND_GPU"}[kind]
    lines.append(f"instance_group [\n  {{\n    count: {instances}{kind_line}\n  }}\n]")
    if parameters:
        entries = [f"  {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in parameters.items()]
        lines.append("parameters [\n" + ",\n".join(entries) + "\n]")
    return "\n".join(lines) + "\n"


_PYTHON_MODEL = """\
\"""Triton python-backend model written by `fringelive export triton --platform python`.

Runs model.onnx (beside this file) with ONNX Runtime inside the python backend stub: input
(N, 1, H, W) float32 -> output (N, C, H, W) float32 logits. Requests the dynamic batcher hands
over together are grouped by shape and run as one batch. Needs numpy >= 1.22 and onnxruntime in
the stub's Python environment.

Tensors cross the stub through DLPack, not pb_utils' numpy conversion: stubs built against
NumPy 1.x headers (e.g. the one nvidia-pytriton bundles) misread NumPy 2 dtypes there (zero
strides on inputs, zero-byte outputs).
\"""

import ctypes
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# The stub renames a consumed capsule "used_dlpack"; NumPy's capsule destructor expects
# "used_dltensor" and otherwise reports an error on every call (the tensor itself is released
# by the stub either way).
_USED = b"used_dltensor"
_set_name = ctypes.pythonapi.PyCapsule_SetName
_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_name.restype = ctypes.c_int


def _to_numpy(tensor):
    return np.from_dlpack(tensor)


def _to_tensor(name, array):
    array = np.ascontiguousarray(array)
    capsule = array.__dlpack__()
    out = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_name(capsule, _USED)
    return out


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value", "0")
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, options, providers=providers)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            x = pb_utils.get_input_tensor_by_name(request, self.input_name)
            a = None if x is None else _to_numpy(x)
            if a is None or a.dtype != np.float32 or a.ndim != 4:
                got = "nothing" if a is None else f"{a.shape} {a.dtype}"
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"input {self.input_name!r} must be (N, 1, H, W) float32, got {got}"))
                continue
            groups.setdefault(a.shape[1:], []).append((i, a))
        for items in groups.values():
            batch = np.concatenate([a for _, a in items]) if len(items) > 1 else items[0][1]
            try:
                y = self.session.run([self.output_name], {self.input_name: batch})[0]
            except Exception as e:  # noqa: BLE001 - every request of the group gets the error
                for i, _ in items:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))
                continue
            start = 0
            for i, a in items:
                part = y[start:start + a.shape[0]]
                start += a.shape[0]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[_to_tensor(self.output_name, part)])
        return responses

    def finalize(self):
        self.session = None
"""


def python_model_source() -> str:
    """``model.py`` of a python-backend model: ONNX Runtime on ``model.onnx`` beside it."""
    return _PYTHON_MODEL


def _staging_dir(repo: Path, name: str) -> Path:
    """A fresh directory beside ``repo`` (not inside: a polling server would see it), or inside
    it under a hidden name when the parent is not writable (a repository mounted at ``/models``)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))


def _move_into_place(stage: Path, dst: Path) -> None:
    """Replace ``dst`` by ``stage``: a rename, or a copy when they lie on different filesystems."""
    if dst.exists():
        shutil.rmtree(dst)
    try:
        os.replace(stage, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.copytree(stage, dst)
        shutil.rmtree(stage, ignore_errors=True)


def export_triton(bundle: Bundle | str | os.PathLike[str], out: str | os.PathLike[str], *,
                  prefix: str | None = None, platform: str = "onnxruntime", max_batch: int = 8,
                  instances: int = 1, kind: str = "auto", queue_delay_us: int = 0,
                  intra_op_threads: int | None = None, overwrite: bool = False) -> TritonExport:
    """Write (or add to) the Triton model repository ``out`` for every member of ``bundle``.

    ``prefix``: model-name prefix (default :func:`default_model_prefix` of the bundle name);
    ``platform``: onnxruntime | python; ``max_batch``: Triton ``max_batch_size``, samples;
    ``instances``: model instances per device; ``kind``: auto | cpu | gpu;
    ``queue_delay_us``: dynamic-batcher delay, µs; ``intra_op_threads``: ONNX Runtime threads
    per instance (None = runtime default). Models of this prefix already in ``out`` are replaced
    only with ``overwrite``. Each model directory is staged beside ``out`` and renamed into
    place, the index is written last. Raises :class:`TritonExportError` (bad option, ONNX file
    Triton cannot declare, existing models) or :class:`~fringelive.bundle.bundle_io.BundleError`.
    """
    if platform not in PLATFORMS:
        raise TritonExportError(f"platform must be one of {list(PLATFORMS)}, got {platform!r}")
    if kind not in INSTANCE_KINDS:
        raise TritonExportError(f"kind must be one of {list(INSTANCE_KINDS)}, got {kind!r}")
    if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int)
                                         or intra_op_threads < 1):
        raise TritonExportError(f"intra_op_threads must be an integer >= 1 or None, got {intra_op_threads!r}")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    card = bundle.card
    prefix = default_model_prefix(card.name) if prefix is None else prefix
    check_prefix(prefix)
    repo = Path(out)
    if repo.exists() and not repo.is_dir():
        raise TritonExportError(f"model repository {repo} exists and is not a directory")
    repo.mkdir(parents=True, exist_ok=True)
    names = [model_name(prefix, i) for i in range(len(card.members))]
    stale = sorted(p.name for p in repo.iterdir() if p.is_dir() and re.fullmatch(re.escape(prefix) + r"_m\d+", p.name))
    if stale and not overwrite:
        raise TritonExportError(f"model repository {repo} already holds models {stale} of prefix {prefix!r} "
                                "(pass overwrite=True / --force, or choose another --name)")
    index_path = repo / f"{prefix}{INDEX_SUFFIX}"
    index_path.unlink(missing_ok=True)  # no index while models change
    params_common = {"fringelive_bundle": card.name}
    if intra_op_threads is not None:
        params_common["intra_op_thread_count"] = str(intra_op_threads)  # read by the onnxruntime backend and model.py
    models: list[dict[str, Any]] = []
    for stale_name in stale:
        if stale_name not in names:
            shutil.rmtree(repo / stale_name)
    for i, (name, member) in enumerate(zip(names, card.members)):
        src = bundle.path / member.file
        inp, outp = onnx_io(src, member.input_name, member.output_name)
        if inp.dims[0] != 1:
            raise TritonExportError(f"{src}: input {inp.name!r} has {inp.dims[0]} channels; the daemon sends (N, 1, H, W)")
        params = {**params_common, "fringelive_member": member.file, "fringelive_member_sha256": member.sha256}
        config = model_config_text(
            name, platform=platform, inputs=[inp], outputs=[outp], max_batch=max_batch, instances=instances,
            kind=kind, queue_delay_us=queue_delay_us, parameters=params,
            comment=f"Written by `fringelive export triton` from bundle {card.name!r}, member {i} ({member.file}).")
        stage = _staging_dir(repo, name)
        try:
            (stage / "1").mkdir()
            shutil.copyfile(src, stage / "1" / "model.onnx")
            digest = sha256_file(stage / "1" / "model.onnx")
            if digest != member.sha256:
                raise BundleError(f"bundle {bundle.path}: member {member.file!r} copied with sha256 {digest}, "
                                  f"card says {member.sha256} (file changed during export?)")
            if platform == "python":
                (stage / "1" / "model.py").write_text(python_model_source(), encoding="utf-8")
            (stage / "config.pbtxt").write_text(config, encoding="utf-8")
            os.chmod(stage, 0o755)  # mkdtemp makes it owner-only; the server may run as another user
            _move_into_place(stage, repo / name)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        models.append({"name": name, "member": member.file, "sha256": member.sha256,
                       "input": {"name": inp.name, "data_type": inp.data_type, "dims": list(inp.dims)},
                       "output": {"name": outp.name, "data_type": outp.data_type, "dims": list(outp.dims)}})
    index = {
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "prefix": prefix, "bundle": card.name,
        "platform": platform, "max_batch_size": max_batch, "instances": instances, "kind": kind,
        "queue_delay_us": queue_delay_us, "models": models, "card": card.to_dict(),
    }
    tmp = index_path.with_name(index_path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, index_path)
    return TritonExport(repository=repo, prefix=prefix, models=tuple(names), index=index_path, platform=platform)


# --- a local server: the tritonserver that nvidia-pytriton bundles ---------------------------------


