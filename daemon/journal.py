"""The results journal: every published result and error, keyed by its ``seq``, in a bounded,
append-only SQLite database on local disk, so a subscriber that missed messages (slow, late,
disconnected, restarted) can replay them (control ``replay``, ``fringelive watch --since``).

Format: one SQLite file in WAL mode (``synchronous = NORMAL``: a commit per message survives a
daemon crash; a power cut may lose the last commits), table ``messages(seq INTEGER PRIMARY KEY,
t REAL, nbytes INTEGER, parts BLOB)`` where ``parts`` is the msgpack list of the message's parts
exactly as published (``[b"result", header, mask (, probabilities)]`` or ``[b"error", header]``)
and ``t`` the Unix time it was published. A restarted daemon goes on from the journal's last
``seq`` + 1. Caps (``[journal] max_bytes``, ``max_age_s``): the oldest messages are deleted
every :data:`TRIM_EVERY` appends (and at start) once the sum of ``nbytes`` or their age exceeds
them; the file itself keeps its largest size (SQLite reuses freed pages).

The publisher thread appends (before it sends, so whatever a subscriber saw can be replayed);
the control thread reads. A write error (disk full, I/O error, read-only file) never stops the
daemon: the message is published anyway, the journal is *degraded* (``fringelive_journal_degraded``
= 1, ``status["journal"]["degraded"]``, ``fringelive health`` fails) until a later write succeeds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack

from fringelive.daemon.endpoints import ConfigError

__all__ = ["JournalConfig", "ResultsJournal", "MAX_REPLAY_MESSAGES", "MAX_REPLAY_BYTES", "TRIM_EVERY"]

log = logging.getLogger("fringelive.daemon")

#: Largest ``limit`` of one ``replay`` chunk (messages) and the byte budget of one chunk.
MAX_REPLAY_MESSAGES = 1000
MAX_REPLAY_BYTES = 32 * 2**20
#: Caps are enforced every this many appends.
TRIM_EVERY = 64


@dataclass(frozen=True)
class JournalConfig:
    """``[journal]``: ``enabled``; ``path``: the SQLite file (its directory is created);
    ``max_bytes``: cap on the messages kept, bytes; ``max_age_s``: messages older than this are
    deleted, s."""

    enabled: bool = False
    path: Path | None = None
    max_bytes: int = 256 * 2**20
    max_age_s: float = 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigError(f"journal.max_bytes must be a positive integer (bytes), got {self.max_bytes!r}")
        if not (isinstance(self.max_age_s, (int, float)) and self.max_age_s > 0):
            raise ConfigError(f"journal.max_age_s must be > 0 (seconds), got {self.max_age_s!r}")
        if self.enabled and self.path is None:
            raise ConfigError("journal.path is required when journal.enabled = true")


class ResultsJournal:
    """The journal of one daemon. ``on_state(degraded, entries)`` is called after appends and
    trims (metrics). Thread-safe (one connection, one lock)."""

    def __init__(self, config: JournalConfig, on_state: Callable[[bool, int], None] | None = None) -> None:
        if config.path is None:
            raise ConfigError("journal.path is required when journal.enabled = true")
        self.config = config
        self.path = Path(config.path)
        self._on_state = on_state or (lambda degraded, entries: None)
        self._lock = threading.Lock()
        self.degraded = False
        self.last_error: str | None = None
        self.write_errors = 0
        self._appends = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={16 * 2**20}")
            self._db.execute("CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, t REAL NOT NULL, "
                             "nbytes INTEGER NOT NULL, parts BLOB NOT NULL)")
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0), COALESCE(MAX(seq), 0) FROM messages").fetchone()
        except (sqlite3.Error, OSError) as e:
            raise ConfigError(f"journal.path: cannot open {str(self.path)!r} as a SQLite journal: {e}") from None
        self.entries, self.total_bytes, self.last_seq = int(row[0]), int(row[1]), int(row[2])
        self._trim()
        self._on_state(self.degraded, self.entries)

    # -- writing (publisher thread) ---------------------------------------------------------------
    def append(self, seq: int, parts: Sequence[Any]) -> bool:
        """Store one published message; False (and degraded) when it could not be written."""
        blob = msgpack.packb([bytes(p) for p in parts], use_bin_type=True)
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO messages (seq, t, nbytes, parts) VALUES (?, ?, ?, ?)",
                                 (int(seq), time.time(), len(blob), blob))
            except (sqlite3.Error, OSError) as e:
                self._failed(e)
                self._on_state(True, self.entries)
                return False
            self.entries += 1
            self.total_bytes += len(blob)
            self.last_seq = max(self.last_seq, int(seq))
            if self.degraded:
                log.warning("journal %s: writable again after %d failed write(s)", self.path, self.write_errors)
            self.degraded = False
            self._appends += 1
            if self._appends % TRIM_EVERY == 0 or self.total_bytes > self.config.max_bytes:
                self._trim()
        self._on_state(self.degraded, self.entries)
        return True

    def _failed(self, e: BaseException) -> None:
        self.write_errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        if not self.degraded:
            log.error("journal %s degraded (results are still published): %s", self.path, self.last_error)
        self.degraded = True

    def _trim(self) -> None:
        """Delete messages beyond the age and size caps (caller holds the lock, or at init)."""
        try:
            cutoff = time.time() - self.config.max_age_s
            self._db.execute("DELETE FROM messages WHERE t < ?", (cutoff,))
            excess = self.total_bytes - self.config.max_bytes
            if excess > 0:
                last, freed = None, 0
                for seq, nbytes in self._db.execute("SELECT seq, nbytes FROM messages ORDER BY seq"):
                    last, freed = seq, freed + nbytes
                    if freed >= excess:
                        break
                if last is not None:
                    self._db.execute("DELETE FROM messages WHERE seq <= ?", (last,))
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM messages").fetchone()
            self.entries, self.total_bytes = int(row[0]), int(row[1])
        except (sqlite3.Error, OSError) as e:
            self._failed(e)

    # -- reading (control thread) -----------------------------------------------------------------
    def read(self, since: int, limit: int = MAX_REPLAY_MESSAGES,
             max_bytes: int = MAX_REPLAY_BYTES) -> dict[str, Any]:
        """Messages with ``seq >= since`` in order, at most ``limit`` and about ``max_bytes``:
        ``{"messages": [[seq, parts], ...], "first_seq": oldest kept, "last_seq": newest,
        "next": the seq to ask for next, "complete": True when nothing newer is kept}``."""
        limit = max(1, min(int(limit), MAX_REPLAY_MESSAGES))
        with self._lock:
            first = self._db.execute("SELECT MIN(seq) FROM messages").fetchone()[0]
            rows = self._db.execute("SELECT seq, parts FROM messages WHERE seq >= ? ORDER BY seq LIMIT ?",
                                    (int(since), limit)).fetchall()
            last = self.last_seq
        messages, size = [], 0
        for seq, blob in rows:
            if messages and size + len(blob) > max_bytes:
                break
            messages.append([int(seq), msgpack.unpackb(blob, raw=False)])
            size += len(blob)
        nxt = messages[-1][0] + 1 if messages else max(int(since), (first or 0))
        return {"messages": messages, "first_seq": first, "last_seq": last, "next": nxt,
                "complete": not messages or nxt > last}

    def recent_keys(self, n: int) -> list[tuple[str, int]]:
        """``(series, frame)`` of the last ``n`` journalled results and errors, oldest first,
        leaving out frames dropped at shutdown (they are to be sent again): the ack-mode dedupe
        window of a restarted daemon."""
        with self._lock:
            rows = self._db.execute("SELECT parts FROM messages ORDER BY seq DESC LIMIT ?", (int(n),)).fetchall()
        keys = []
        for (blob,) in reversed(rows):
            try:
                parts = msgpack.unpackb(blob, raw=False)
                h = msgpack.unpackb(parts[1], raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001 - a damaged row only shrinks the window
                continue
            if isinstance(h.get("series"), str) and isinstance(h.get("frame"), int) and h.get("reason") != "shutdown":
                keys.append((h["series"], h["frame"]))
        return keys

    def describe(self) -> dict[str, Any]:
        """``status["journal"]``."""
        return {"enabled": True, "path": str(self.path), "degraded": self.degraded, "entries": self.entries,
                "bytes": self.total_bytes, "last_seq": self.last_seq, "write_errors": self.write_errors,
                "last_error": self.last_error, "max_bytes": self.config.max_bytes, "max_age_s": self.config.max_age_s}

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
