"""The ``folder`` source: follow the folder a microscope writes frames into (Gatan in situ
recording, Velox/TIA export) and feed each new frame to the daemon.

* **Discovery**: inotify (``inotify_simple``) wakes the scan when a file is written, closed or
  renamed into the folder; without it (or with ``inotify = false``) the folder is polled every
  ``poll_s`` seconds. Only the folder itself is followed (not sub-folders); names starting with
  ``.`` and suffixes outside ``suffixes`` are ignored.
* **Complete files only**: a file is read when its writer closed it (inotify ``IN_CLOSE_WRITE``
  or a rename into the folder) with no write since, or when its size and mtime stayed unchanged
  for ``settle_s`` seconds. A file that still cannot be read is retried after it changes; one
  that stays unreadable and unchanged for ``give_up_s`` seconds is counted
  ``rejected{reason="unreadable"}`` once.
* **Growing files** (multi-page TIFF, ``.npy``/EMD/HDF5 stacks): a file that changes after it was
  read is read again and only its new frames are sent.
* **Order**: the files found ready in one scan are sent by acquisition time (``timestamp`` from
  the file's metadata, as ``fringelive send`` reads it: ``engine/readers.py``), files without
  one after them by name (``order = "name"``: by name only).
* **Series and frame ids**: one series per folder (``series``, default the folder's name) with
  frames numbered 0, 1, ... in the order sent; ``series_per_file = true``: series = the file's
  stem and frame = the index in the file. ``tags.file`` and ``tags.file_frame`` name the origin.
* **Exactly once across restarts**: a JSON state file (``state_file``, default
  ``<folder>/.fringelive-state.json``) records, per file, how many frames the daemon accepted
  (queued, dropped or rejected) and the file's size/mtime then; it is rewritten atomically after
  every frame. A restarted daemon skips what it records and continues the frame numbering.
* **After**: ``after = "move"`` moves a file into ``move_to`` once all its frames were accepted,
  ``"delete"`` deletes it (for writers that write one file per frame), ``"keep"`` (default).
* **Metadata**: the file's own (readers.py: DM pixel size, exposure, voltage, camera, time;
  TIFF description/ImageJ/FEI tags), with ``meta`` (e.g. ``pixel_size_nm``) over it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fringelive.daemon.endpoints import ConfigError
from fringelive.daemon.sources.base import SourceFrame, ThreadedSource
from fringelive.engine.readers import SUPPORTED_SUFFIXES, read_frames

__all__ = ["FolderSourceConfig", "FolderSource", "AFTER_ACTIONS", "STATE_NAME", "inotify_available"]

log = logging.getLogger("fringelive.daemon.sources")

AFTER_ACTIONS = ("keep", "move", "delete")
STATE_NAME = ".fringelive-state.json"
_STATE_VERSION = 1


def _import_inotify() -> Any:
    """``inotify_simple`` or None (the one guarded import of it)."""
    try:
        import inotify_simple
    except ImportError:
        return None
    return inotify_simple


def inotify_available() -> bool:
    return _import_inotify() is not None and hasattr(os, "uname") and os.uname().sysname == "Linux"


@dataclass(frozen=True)
class FolderSourceConfig:
    """``[[source]] kind = "folder"``. ``path``: the folder (must exist); ``poll_s``, ``settle_s``,
    ``give_up_s``: seconds; ``meta``: wire metadata keys over the files' own."""

    path: Path
    name: str | None = None
    series: str | None = None
    series_per_file: bool = False
    suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES
    order: str = "time"
    poll_s: float = 0.25
    settle_s: float = 1.0
    give_up_s: float = 30.0
    inotify: bool = True
    state_file: Path | None = None
    after: str = "keep"
    move_to: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not Path(self.path).is_dir():
            raise ConfigError(f"path: no such directory: {str(self.path)!r}")
        bad = [s for s in self.suffixes if s.lower() not in SUPPORTED_SUFFIXES]
        if not self.suffixes or bad:
            raise ConfigError(f"suffixes must be a non-empty list of {list(SUPPORTED_SUFFIXES)}, got {list(self.suffixes)!r}")
        if self.order not in ("time", "name"):
            raise ConfigError(f"order must be 'time' or 'name', got {self.order!r}")
        for key in ("poll_s", "settle_s", "give_up_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise ConfigError(f"{key} must be a number of seconds in (0, 3600], got {value!r}")
        if self.after not in AFTER_ACTIONS:
            raise ConfigError(f"after must be one of {list(AFTER_ACTIONS)}, got {self.after!r}")
        if self.after == "move" and (self.move_to is None or not Path(self.move_to).is_dir()):
            raise ConfigError(f"move_to must be an existing directory with after = \"move\", got "
                              f"{None if self.move_to is None else str(self.move_to)!r}")
        if self.series is not None and not 0 < len(self.series) <= 256:
            raise ConfigError(f"series must have 1..256 characters, got {self.series!r}")
        if not isinstance(self.meta, dict) or any(k in ("series", "frame", "shape", "dtype") for k in self.meta):
            raise ConfigError(f"meta must be a table of metadata keys (not series/frame/shape/dtype), got {self.meta!r}")

    @property
    def label(self) -> str:
        return self.name or f"folder:{Path(self.path).name}"

    @property
    def state_path(self) -> Path:
        return Path(self.state_file) if self.state_file is not None else Path(self.path) / STATE_NAME


class _State:
    """The JSON state file: per file ``{frames, size, mtime_ns, complete}`` and ``next_frame``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self.next_frame = 0
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") != _STATE_VERSION:
                    raise ValueError(f"version {data.get('version')!r}")
                self.files = dict(data["files"])
                self.next_frame = int(data["next_frame"])
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise ConfigError(f"folder source state file {str(path)!r} is not readable ({e}); "
                                  "move it away to process the folder again from scratch") from None

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": _STATE_VERSION, "next_frame": self.next_frame, "files": self.files}),
                       encoding="utf-8")
        os.replace(tmp, self.path)


@dataclass
class _Watch:
    size: int
    mtime_ns: int
    since: float                 # monotonic time of the last change, s
    failed_at: float | None = None


class FolderSource(ThreadedSource):
    """Follows ``config.path``; see the module docstring."""

    kind = "folder"

    def __init__(self, config: FolderSourceConfig) -> None:
        super().__init__(config.label, maxsize=2)
        self.config = config
        self.folder = Path(config.path)
        self._state = _State(config.state_path)
        self._watch: dict[str, _Watch] = {}
        self._closed: set[str] = set()    # inotify: closed by the writer (or renamed in) since its last write
        #: per file what was read and handed on (the producer's view; the state file trails it)
        self._emitted: dict[str, dict[str, Any]] = {k: dict(v) for k, v in self._state.files.items()}
        self._next_frame = self._state.next_frame
        self._inotify: Any = None
        mod = _import_inotify() if config.inotify else None
        if mod is not None:
            try:
                self._inotify = mod.INotify()
                f = mod.flags
                self._inotify.add_watch(str(self.folder), f.CLOSE_WRITE | f.MOVED_TO | f.CREATE | f.MODIFY)
                self._flags = f
            except OSError as e:
                log.warning("inotify unavailable for %s (%s); polling every %g s", self.folder, e, config.poll_s)
                self._inotify = None
        self.uses_inotify = self._inotify is not None

    # -- producer thread ------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopped.is_set():
            self._wait_events()
            for name, frames in self._ready_files():
                for item in frames:
                    if not self.emit(item):
                        return

    def _wait_events(self) -> None:
        if self._inotify is None:
            self.stopped.wait(self.config.poll_s)
            return
        for event in self._inotify.read(timeout=int(self.config.poll_s * 1000)):
            if event.mask & (self._flags.CLOSE_WRITE | self._flags.MOVED_TO):
                self._closed.add(event.name)
            elif event.mask & (self._flags.MODIFY | self._flags.CREATE):
                self._closed.discard(event.name)

    def _candidates(self) -> list[os.DirEntry]:
        suffixes = tuple(s.lower() for s in self.config.suffixes)
        state_names = {self.config.state_path.name, self.config.state_path.name + ".tmp"}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            raise RuntimeError(f"the followed folder {str(self.folder)!r} disappeared") from None
        return [e for e in entries if not e.name.startswith(".") and e.name not in state_names
                and e.name.lower().endswith(suffixes) and e.is_file()]

    def _ready_files(self) -> list[tuple[str, list[SourceFrame]]]:
        """Stat every candidate, update the watch list, read the files that are complete and
        return their new frames, files in acquisition order."""
        now = time.monotonic()
        ready: list[tuple[tuple[Any, ...], str, list[SourceFrame]]] = []
        present = set()
        for entry in self._candidates():
            name = entry.name
            present.add(name)
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            done = self._emitted.get(name)
            if done and done.get("complete") and done["size"] == st.st_size and done["mtime_ns"] == st.st_mtime_ns:
                continue
            closed = name in self._closed
            w = self._watch.get(name)
            if w is None or (w.size, w.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._watch[name] = w = _Watch(st.st_size, st.st_mtime_ns, now)
                if not closed:
                    continue
            if not (closed or now - w.since >= self.config.settle_s):
                continue
            if w.failed_at is not None and now - w.failed_at < self.config.give_up_s:
                continue  # unchanged since it failed: wait for a change or for give_up_s
            frames = self._read(name, st, w, now)
            if frames is not None:
                ready.append((frames[0], name, frames[1]))
        for gone in set(self._watch) - present:
            del self._watch[gone]
        self._closed &= present
        ready.sort(key=lambda r: r[0])
        for _, _, frames in ready:  # frame ids of the folder series in the order sent
            for item in frames:
                if "frame" in item.header and item.header["frame"] is None:
                    item.header["frame"] = self._next_frame
                    self._next_frame += 1
        return [(name, frames) for _, name, frames in ready]

    def _read(self, name: str, st: os.stat_result, w: _Watch, now: float) -> tuple[tuple[Any, ...], list[SourceFrame]] | None:
        path = self.folder / name
        skip = int((self._emitted.get(name) or {}).get("frames", 0))
        try:
            images = list(read_frames(path))
        except Exception as e:  # noqa: BLE001 - a half-written or broken file: retry, then reject
            if w.failed_at is None:
                w.failed_at = now
                log.info("%s: not readable yet (%s: %s); retrying when it changes", path, type(e).__name__, e)
                return None
            header = {"series": self._series(name), "tags": {"file": name}}   # no frame id: nothing was read
            item = SourceFrame(header, reject=("unreadable", f"{path}: {type(e).__name__}: {e}"))
            item.on_done = self._on_done(name, st, skip, complete=True, header=header)
            self._forget(name, st, skip)
            return (True, math.inf, name), [item]
        new = images[skip:]
        self._forget(name, st, skip + len(new))
        if not new:
            return None
        items = []
        for k, image in enumerate(new):
            i = skip + k
            meta = dict(image.meta)
            meta.update(self.config.meta)
            tags = dict(meta.get("tags") or {})
            tags.update(file=name, file_frame=i)
            meta["tags"] = tags
            meta.update(series=self._series(name), frame=i if self.config.series_per_file else None)
            items.append(SourceFrame(meta, image.pixels, on_done=self._on_done(
                name, st, i + 1, complete=k == len(new) - 1, header=None if self.config.series_per_file else meta)))
        stamp = new[0].meta.get("timestamp")
        key: tuple[Any, ...] = (stamp is None, stamp if stamp is not None else 0.0, name) if self.config.order == "time" \
            else (False, 0.0, name)
        return key, items

    def _forget(self, name: str, st: os.stat_result, frames: int) -> None:
        """``name`` was read as it is now: stop watching it until it changes."""
        self._watch.pop(name, None)
        self._closed.discard(name)
        self._emitted[name] = {"frames": frames, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "complete": True}

    def _series(self, name: str) -> str:
        if self.config.series_per_file:
            return Path(name).stem[:256] or "file"
        return (self.config.series or self.folder.name or "folder")[:256]

    def _on_done(self, name: str, st: os.stat_result, frames: int, *, complete: bool,
                 header: dict[str, Any] | None) -> Any:
        """The callback for when the daemon accepted a frame; ``header`` holds its frame id in
        the folder series (assigned once the scan's files are ordered), None per file."""
        return lambda: self._record(name, st, frames, complete=complete,
                                    frame=None if header is None else header.get("frame"))

    def _record(self, name: str, st: os.stat_result, frames: int, *, complete: bool, frame: int | None) -> None:
        """A frame (or the whole file) was accepted by the daemon: write it to the state file;
        when the file is complete, apply ``after``."""
        with self._state.lock:
            self._state.files[name] = {"frames": frames, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                       "complete": complete}
            if frame is not None:
                self._state.next_frame = max(self._state.next_frame, frame + 1)
            self._state.save()
        if complete and self.config.after != "keep":
            path = self.folder / name
            try:
                if self.config.after == "delete":
                    path.unlink()
                else:
                    shutil.move(str(path), str(Path(self.config.move_to) / name))  # type: ignore[arg-type]
            except OSError as e:
                log.warning("%s: cannot %s it after processing: %s", path, self.config.after, e)

    def on_close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
