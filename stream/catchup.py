"""Catching up on missed results: replay from a daemon's results journal (control ``replay``)
and :class:`GapFiller`, which watches the ``seq`` of each published message, reports gaps and
fills them from the journal (``fringelive watch --control EP [--since SEQ]``)."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterator, Sequence

import msgpack
import zmq

from fringelive.daemon.protocol import configure_curve_client

#: With ``control``, a quiet subscriber asks the journal for a missed tail this often, ms.
IDLE_CHECK_MS = 1000

__all__ = ["IDLE_CHECK_MS", "ReplayError", "replay", "replay_chunk", "GapFiller", "header_of"]


class ReplayError(RuntimeError):
    """The daemon did not answer a replay request, or refused it (the message says why)."""


def replay_chunk(endpoint: str, since: int, *, limit: int | None = None, timeout_s: float = 10.0,
                 context: Any = None, curve: tuple[str, str] | None = None) -> dict[str, Any]:
    """One ``replay`` reply (msgpack, so parts stay bytes); raises :class:`ReplayError`."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.linger = 0
        if curve is not None:
            configure_curve_client(sock, *curve)
        sock.connect(endpoint)
        request: dict[str, Any] = {"cmd": "replay", "since": int(since)}
        if limit is not None:
            request["limit"] = int(limit)
        sock.send(msgpack.packb(request))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise ReplayError(f"no reply to replay from {endpoint} within {timeout_s:g} s")
        reply = msgpack.unpackb(sock.recv(), raw=False, strict_map_key=False)
    finally:
        sock.close(linger=0)
    if not reply.get("ok"):
        raise ReplayError(f"replay refused by {endpoint}: {reply.get('error')}")
    return reply


def replay(endpoint: str, since: int, *, until: int | None = None, **kwargs: Any) -> Iterator[tuple[int, list[bytes]]]:
    """Every journalled ``(seq, parts)`` with ``since <= seq`` (``<= until`` when given), chunk
    by chunk, in order."""
    nxt = since
    while True:
        reply = replay_chunk(endpoint, nxt, **kwargs)
        for seq, parts in reply["messages"]:
            if until is not None and seq > until:
                return
            yield int(seq), [bytes(p) for p in parts]
        if reply["complete"] or not reply["messages"]:
            return
        nxt = reply["next"]


def header_of(parts: Sequence[Any]) -> dict[str, Any]:
    """The header map of a published message (part 1)."""
    return msgpack.unpackb(bytes(parts[1]), raw=False, strict_map_key=False)


class GapFiller:
    """Orders and completes a subscriber's stream by ``seq``.

    :meth:`feed` takes each live message and returns the messages to handle, in ``seq`` order:
    first those missing between the last one handled and this one (from the journal when
    ``control`` is given), then this one; messages already handled are left out. A message whose
    ``worker`` differs from the previous one's with a lower ``seq`` means a new daemon without a
    journal: the count starts again. ``gaps`` lists every gap seen as ``(first, last)`` seq and
    ``unrecovered`` how many messages of them the journal no longer (or never) held.
    """

    def __init__(self, control: str | None = None, *, since: int | None = None,
                 report: Callable[[str], None] | None = None, **replay_kwargs: Any) -> None:
        self.control = control
        self.last: int | None = None if since is None else since - 1
        self.worker: str | None = None
        self.gaps: list[tuple[int, int]] = []
        self.recovered = 0
        self.unrecovered = 0
        self._report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self._kwargs = replay_kwargs
        self._active = time.monotonic()

    def poll_ms(self, timeout_ms: int | None) -> int | None:
        """How long the subscriber may wait for a message before :meth:`idle` (ms; None: for ever)."""
        if self.control is None:
            return timeout_ms
        return IDLE_CHECK_MS if timeout_ms is None else min(timeout_ms, IDLE_CHECK_MS)

    def timed_out(self, timeout_s: float | None) -> bool:
        """True once nothing came (live or replayed) for ``timeout_s`` seconds."""
        if timeout_s is None:
            return False
        return self.control is None or time.monotonic() - self._active >= timeout_s

    def start(self) -> list[list[bytes]]:
        """With ``since``: everything the journal holds from there on."""
        if self.last is None or self.control is None:
            return []
        return self._fill(self.last + 1, None)

    def idle(self) -> list[list[bytes]]:
        """Messages journalled after the last one handled (call when the stream went quiet)."""
        if self.last is None or self.control is None:
            return []
        return self._fill(self.last + 1, None, quiet=True)

    def feed(self, parts: Sequence[Any]) -> list[list[bytes]]:
        self._active = time.monotonic()
        parts = [bytes(p) for p in parts]
        try:
            header = header_of(parts)
        except Exception:  # noqa: BLE001 - malformed: let the caller report it
            return [parts]
        seq, worker = header.get("seq"), header.get("worker")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return [parts]  # an older daemon: no sequence numbers
        out: list[list[bytes]] = []
        if self.last is not None and seq <= self.last:
            if worker == self.worker or self.worker is None:
                return []  # already handled (replayed before it arrived live)
            self.last = None  # another daemon, counting afresh
        if self.last is not None and seq > self.last + 1:
            first, end = self.last + 1, seq - 1
            self.gaps.append((first, end))
            self._report(f"watch: gap: seq {first}..{end} ({end - first + 1} message(s)) missed"
                         + (", replaying from the journal" if self.control else ""))
            out = self._fill(first, end)
        self.last, self.worker = seq, worker
        out.append(parts)
        return out

    def _fill(self, first: int, end: int | None, quiet: bool = False) -> list[list[bytes]]:
        if self.control is None:
            if end is not None:
                self.unrecovered += end - first + 1
            return []
        got: list[list[bytes]] = []
        try:
            for seq, parts in replay(self.control, first, until=end, **self._kwargs):
                got.append(parts)
                self.last = seq
                self.worker = header_of(parts).get("worker", self.worker)
        except ReplayError as e:
            self._report(f"watch: {e}")
        if end is not None:
            missing = (end - first + 1) - len(got)
            self.unrecovered += missing
            if missing:
                self._report(f"watch: {missing} message(s) of seq {first}..{end} are not in the journal")
        elif got and not quiet:
            self._report(f"watch: replayed {len(got)} message(s) from seq {first}")
        if got:
            self._active = time.monotonic()
        self.recovered += len(got)
        return got
