"""Driving a DECTRIS detector through its SIMPLON REST API, for the ``dectris`` source with
``control = true`` (``docs/acquisition.md``). Stdlib HTTP only (``urllib``).

Endpoints used (``{v}`` = ``api_version``; values are JSON ``{"value": ...}``):

- ``GET  /detector/api/version/``: reachability check at start-up;
- ``PUT  /detector/api/{v}/config/{nimages,ntrigger,trigger_mode,count_time}``: once, at start;
- ``PUT  /stream/api/{v}/config/mode`` = ``"enabled"``: once, at start;
- ``PUT  /detector/api/{v}/command/arm`` (answers ``{"sequence id": N}``), ``.../trigger``
  (``ints``: blocks until the trigger's images are taken), ``.../disarm``.

:class:`SimplonControl` runs series back to back: arm, then ``ntrigger`` triggers (``ints``) or
wait until ``nimages × ntrigger`` images of the series came in (``exts``: hardware triggers),
disarm, wait (up to :data:`END_WAIT_S`) for the series' end message on the stream, pause
``pause_s``; ``series_count`` series (0: until stopped). A detector left armed when the daemon
stops is disarmed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from fringelive.daemon.endpoints import ConfigError
from fringelive.daemon.sources.dectris_config import DectrisSourceConfig

__all__ = ["SimplonClient", "SimplonControl", "SimplonError", "END_WAIT_S"]

log = logging.getLogger("fringelive.daemon.sources")

#: Seconds to wait, after disarm, for the series' end message before the next series.
END_WAIT_S = 30.0
_TIMEOUT_S = 30.0          # one REST call (a trigger: plus the images' time)
_POLL_S = 0.05


class SimplonError(RuntimeError):
    """A SIMPLON call failed; names the method, URL and the answer."""


class SimplonClient:
    """Minimal SIMPLON client: ``base`` ``http://HOST[:PORT]``, ``version`` e.g. "1.8.0"."""

    def __init__(self, base: str, version: str) -> None:
        self.base, self.version = base.rstrip("/"), version

    def _call(self, method: str, path: str, value: Any = None, timeout: float = _TIMEOUT_S) -> Any:
        url = f"{self.base}{path}"
        data = None if method == "GET" else json.dumps({} if value is None else {"value": value}).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise SimplonError(f"SIMPLON {method} {url} answered HTTP {e.code}: "
                               f"{e.read()[:200].decode(errors='replace')}") from None
        except OSError as e:
            raise SimplonError(f"SIMPLON {method} {url} failed: {e}") from None
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")

    def version_info(self, timeout: float = 5.0) -> Any:
        return self._call("GET", "/detector/api/version/", timeout=timeout)

    def set_config(self, key: str, value: Any, subsystem: str = "detector") -> None:
        self._call("PUT", f"/{subsystem}/api/{self.version}/config/{key}", value)

    def command(self, name: str, timeout: float = _TIMEOUT_S) -> Any:
        return self._call("PUT", f"/detector/api/{self.version}/command/{name}", timeout=timeout)


class SimplonControl:
    """The control loop of one ``dectris`` source (see the module docstring). ``series_ended()``
    and ``images_seen()`` come from the source's stream thread: the numbers of end messages and
    of image messages received so far."""

    def __init__(self, config: DectrisSourceConfig, stopped: threading.Event,
                 ends_seen: Callable[[], int], images_seen: Callable[[], int]) -> None:
        self.config = config
        self.client = SimplonClient(config.api_url, config.api_version or "1.8.0")
        self.stopped = stopped
        self._ends_seen, self._images_seen = ends_seen, images_seen
        self.nimages, self.ntrigger = config.nimages or 1, config.ntrigger or 1
        self.trigger_mode = config.trigger_mode or "ints"
        self.armed = False
        self.series_done = 0
        self.calls: list[str] = []   # commands issued, in order (status, tests)

    def check(self, label: str) -> None:
        """Start-up check: the API answers; :class:`ConfigError` naming the URL otherwise."""
        try:
            self.client.version_info()
        except SimplonError as e:
            raise ConfigError(f"source {label!r}: control = true but the SIMPLON API at {self.client.base} does not "
                              f"answer ({e}); set api = \"http://DCU\" or control = false") from None

    def configure(self) -> None:
        c = self.client
        for key, value in (("nimages", self.nimages), ("ntrigger", self.ntrigger), ("trigger_mode", self.trigger_mode),
                           ("count_time", self.config.count_time)):
            if value is not None:
                c.set_config(key, value)
                self.calls.append(f"config/{key}={value}")
        c.set_config("mode", "enabled", subsystem="stream")
        self.calls.append("stream/config/mode=enabled")

    def _command(self, name: str, timeout: float = _TIMEOUT_S) -> Any:
        answer = self.client.command(name, timeout)
        self.calls.append(name)
        return answer

    def run(self) -> None:
        """Configure, then run series until ``series_count`` or stopped; disarms on the way out."""
        self.configure()
        count = self.config.series_count or 0
        try:
            while not self.stopped.is_set() and (count == 0 or self.series_done < count):
                self._one_series()
                self.stopped.wait(self.config.pause_s or 0.0)
        finally:
            self.disarm_if_armed()

    def _one_series(self) -> None:
        ends, images = self._ends_seen(), self._images_seen()
        answer = self._command("arm")
        self.armed = True
        seq = answer.get("sequence id") if isinstance(answer, dict) else None
        log.info("dectris control: armed, series %s", seq)
        trigger_timeout = _TIMEOUT_S + 2.0 * self.nimages * (self.config.count_time or 1.0)
        for i in range(self.ntrigger):
            if self.stopped.is_set():
                return
            if self.trigger_mode == "ints":
                self._command("trigger", timeout=trigger_timeout)
            else:   # exts: the hardware triggers; wait for this trigger's images
                want = images + (i + 1) * self.nimages
                while self._images_seen() < want:
                    if self.stopped.wait(_POLL_S):
                        return
        self._command("disarm")
        self.armed = False
        t_end = time.monotonic() + END_WAIT_S
        while self._ends_seen() <= ends and time.monotonic() < t_end:
            if self.stopped.wait(_POLL_S):
                return
        if self._ends_seen() <= ends:
            log.warning("dectris control: no end of series %s on the stream within %g s after disarm", seq, END_WAIT_S)
        self.series_done += 1

    def disarm_if_armed(self) -> None:
        if not self.armed:
            return
        try:
            self._command("disarm")
        except SimplonError as e:
            log.warning("dectris control: disarm on stop failed: %s", e)
        self.armed = False
