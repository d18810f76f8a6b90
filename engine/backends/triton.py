"""The ``triton`` backend: tile batches offloaded to an NVIDIA Triton Inference Server, where member
``i`` is served as model ``<prefix>_m<i>`` (``fringelive export triton``). tritonclient is
optional (``fringelive[triton]``) and imported in one place, :func:`_import_tritonclient`."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.bundle.bundle_io import Bundle
from fringelive.bundle.card import Member
from fringelive.bundle.triton_names import default_model_prefix, model_name
from fringelive.engine.backends.base import Backend, BackendUnavailable, register_backend
from fringelive.engine.optional import MissingDependency, import_tritonclient

__all__ = ["TritonBackend", "TritonRequestError", "parse_triton_url"]

log = logging.getLogger("fringelive.engine.backends")


_TRITON_URL_RE = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?/?$")


def parse_triton_url(url: str) -> tuple[str, str, int]:
    """``http[s]://HOST[:PORT]`` → ``(scheme, host, port)``; the port defaults to 8000 (Triton's
    HTTP port) for http and 443 for https. Raises ValueError naming the URL."""
    m = _TRITON_URL_RE.match(url) if isinstance(url, str) else None
    port = int(m.group("port")) if m and m.group("port") else None
    if m is None or (port is not None and not 0 < port < 65536):
        raise ValueError(f"Triton URL must look like http://HOST:PORT or https://HOST:PORT, got {url!r}")
    scheme = m.group("scheme")
    return scheme, m.group("host").strip("[]"), port if port is not None else (8000 if scheme == "http" else 443)


def _import_tritonclient() -> Any:
    try:
        return import_tritonclient()
    except MissingDependency as e:
        raise BackendUnavailable("triton", f"tritonclient cannot be imported ({e}); {e.hint}") from None


class TritonRequestError(RuntimeError):
    """A Triton inference request failed (server error, lost connection, bad response)."""


@register_backend("triton")
class TritonBackend(Backend):
    """One ensemble member served by a Triton Inference Server as model ``model``.

    ``url``: ``http[s]://HOST:PORT`` of the server's HTTP endpoint; ``timeout_s``: connect and
    read timeout per request, s. Construction checks that the server is live and the model ready
    (:class:`BackendUnavailable` naming the URL and model otherwise, or when tritonclient is
    missing), that the model declares ``input_name``/``output_name``, and, when
    ``expected_sha256`` is given, that the model's ``fringelive_member_sha256`` parameter (written
    by ``fringelive export triton``) matches it. A call sends the batch in requests of at most
    the model's ``max_batch_size`` samples and ``max_request_bytes`` bytes of input; Triton's
    dynamic batcher may merge them with other clients' requests of the same tile shape.

    Requests are encoded and decoded with tritonclient (binary tensor data) and sent over one
    keep-alive ``http.client`` connection (tritonclient's own HTTP client is gevent-based and
    bound to the thread that created it; the daemon builds backends in one thread and calls them
    in another). A stale connection is reopened once per request.
    """

    name = "triton"

    def __init__(self, url: str, model: str, *, timeout_s: float = 30.0, input_name: str = "image",
                 output_name: str = "logits", expected_sha256: str | None = None,
                 max_request_bytes: int = 32 << 20) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
        if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be a positive integer, got {max_request_bytes!r}")
        if not isinstance(model, str) or not model or "/" in model:
            raise ValueError(f"Triton model name must be a non-empty string without '/', got {model!r}")
        self._scheme, self._host, self._port = parse_triton_url(url)
        self._tc = _import_tritonclient()
        super().__init__(url.rstrip("/"), model)
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_request_bytes = max_request_bytes
        self.input_name, self.output_name = input_name, output_name
        self._conn: Any = None
        from urllib.parse import quote

        self._path = f"/v2/models/{quote(model, safe='')}"
        try:
            try:
                self._check_server(expected_sha256)
            except OSError as e:
                raise BackendUnavailable("triton", f"the Triton server at {self.url} is unreachable "
                                         f"({type(e).__name__}: {e})") from None
        except BaseException:
            self.close()
            raise

    def _check_server(self, expected_sha256: str | None) -> None:
        """Server live, model ready, its config fits (raises OSError when unreachable)."""
        status, _, _ = self._request("GET", "/v2/health/live")
        if status != 200:
            raise BackendUnavailable("triton", f"the Triton server at {self.url} is not live (GET /v2/health/live: HTTP {status})")
        status, _, _ = self._request("GET", self._path + "/ready")
        if status != 200:
            raise BackendUnavailable("triton", f"model {self.model!r} is not ready on the Triton server at {self.url} "
                                     f"(models there: {self._model_names()}); export it with `fringelive export triton`")
        self.config = self._get_json(self._path + "/config")
        self._check_config(expected_sha256)

    # -- HTTP -----------------------------------------------------------------------------------

    def _connection(self) -> Any:
        import http.client

        if self._conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection, retried once on a fresh connection when the
        old one turns out closed. Raises OSError (incl. timeouts) when the server cannot be
        reached."""
        import http.client

        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady) as e:
                self._drop_connection()
                if attempt:
                    raise ConnectionError(f"{type(e).__name__}: {e}") from None
            except (OSError, http.client.HTTPException):
                self._drop_connection()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_json(self, path: str) -> Any:
        import json

        status, _, data = self._request("GET", path)
        if status != 200:
            raise BackendUnavailable("triton", f"GET {self.url}{path}: HTTP {status}: {data[:200].decode(errors='replace')}")
        return json.loads(data)

    def _model_names(self) -> list[str]:
        import json

        try:
            status, _, data = self._request("POST", "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
            return sorted(str(m.get("name")) for m in json.loads(data)) if status == 200 else []
        except (OSError, ValueError):
            return []

    # -- checks ---------------------------------------------------------------------------------

    def _check_config(self, expected_sha256: str | None) -> None:
        cfg = self.config
        where = f"model {self.model!r} on the Triton server at {self.url}"
        inputs = [t.get("name") for t in cfg.get("input", [])]
        outputs = [t.get("name") for t in cfg.get("output", [])]
        if self.input_name not in inputs or self.output_name not in outputs:
            raise ValueError(f"{where} has inputs {inputs} and outputs {outputs}; expected input "
                             f"{self.input_name!r} and output {self.output_name!r}")
        for t in cfg.get("input", []) + cfg.get("output", []):
            if t.get("name") in (self.input_name, self.output_name) and t.get("data_type") != "TYPE_FP32":
                raise ValueError(f"{where}: tensor {t.get('name')!r} is {t.get('data_type')}, expected TYPE_FP32")
        self.max_batch_size = int(cfg.get("max_batch_size", 0))
        served = (cfg.get("parameters") or {}).get("fringelive_member_sha256", {}).get("string_value")
        if expected_sha256 is not None:
            if served is None:
                log.warning("%s carries no fringelive_member_sha256 parameter: cannot check it serves the "
                            "bundle's member (export repositories with `fringelive export triton`)", where)
            elif served != expected_sha256:
                raise BackendUnavailable("triton", f"{where} serves a network with sha256 {served}, but the local "
                                         f"bundle's member has {expected_sha256}; re-export the repository from "
                                         "this bundle (`fringelive export triton`) or point the daemon at the "
                                         "bundle Triton serves")
        self.served_sha256 = served

    # -- inference ------------------------------------------------------------------------------

    def _chunk(self, n: int, per_sample_bytes: int) -> int:
        most = max(1, self.max_request_bytes // max(1, per_sample_bytes))
        if self.max_batch_size > 0:
            most = min(most, self.max_batch_size)
        return max(1, min(n, most))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        tc = self._tc
        inp = tc.InferInput(self.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = tc.InferRequestedOutput(self.output_name, binary_data=True)
        body, json_size = tc.InferenceServerClient.generate_request_body([inp], outputs=[out])
        headers = {"Content-Type": "application/octet-stream"}
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        try:
            status, rh, data = self._request("POST", self._path + "/infer", body, headers)
        except OSError as e:
            raise TritonRequestError(f"Triton model {self.model!r} at {self.url}: request failed "
                                     f"({type(e).__name__}: {e})") from None
        if status != 200:
            import json

            try:
                msg = json.loads(data).get("error", "")
            except ValueError:
                msg = data[:300].decode(errors="replace")
            raise TritonRequestError(f"Triton model {self.model!r} at {self.url}: HTTP {status}: {msg}")
        length = rh.get("inference-header-content-length")
        result = tc.InferenceServerClient.parse_response_body(
            data, header_length=int(length) if length else None, content_encoding=rh.get("content-encoding"))
        y = result.as_numpy(self.output_name)
        if y is None:
            raise TritonRequestError(f"Triton model {self.model!r} at {self.url}: the response has no output "
                                     f"{self.output_name!r}")
        return y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        step = self._chunk(n, batch[0].nbytes)
        parts = [self._infer(batch[s:s + step]) for s in range(0, n, step)]
        for (s, p) in zip(range(0, n, step), parts):
            if p.shape[0] != min(step, n - s) or p.shape[2:] != batch.shape[2:]:
                raise TritonRequestError(f"Triton model {self.model!r} at {self.url} returned {p.shape} for a "
                                         f"request of shape {batch[s:s + step].shape}")
        out = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])  # a copy: the response buffer is read-only
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._drop_connection()

    @classmethod
    def from_file(cls, kind: str, path: Path, **_: Any) -> "TritonBackend":
        raise ValueError(f"backend 'triton' needs a bundle (its card names the member and its sha256), got the file {path}")

    @classmethod
    def from_member(cls, kind: str, bundle: Bundle, index: int, member: Member, *, device: str | None = None,
                    triton_url: str = "http://127.0.0.1:8000", triton_model_prefix: str | None = None,
                    triton_timeout_s: float = 30.0, **_: Any) -> "TritonBackend":
        if device is not None:
            raise ValueError(f"backend 'triton' runs where the Triton server places the model: device must be None "
                             f"(config: \"auto\"), got {device!r} (choose CPU/GPU with `fringelive export triton --kind`)")
        prefix = default_model_prefix(bundle.card.name) if triton_model_prefix is None else triton_model_prefix
        return cls(triton_url, model_name(prefix, index), timeout_s=triton_timeout_s, input_name=member.input_name,
                   output_name=member.output_name, expected_sha256=member.sha256)

    @classmethod
    def unavailable(cls, kind: str) -> str | None:
        try:  # the client only: whether a server answers depends on the URL
            _import_tritonclient()
        except BackendUnavailable as e:
            return e.reason
        return None
