"""Scale-out on one camera stream (docs/scaling.md): worker identity in result/error headers, the
pure reorder logic of ``fringelive merge`` (stream/merge.py, with a hypothesis property), the
merger over real sockets (cli/merge.py), ``fringelive send --bind``, and three real
daemons sharing one bound PUSH whose results come out of the merger once each, in frame order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fringelive.daemon.config import ConfigError, DaemonConfig, ResultsConfig, default_worker_name, load_config
from fringelive.stream.merge import ReorderSettings, Reorderer
from fringelive.daemon.protocol import decode_error, decode_result, encode_error, encode_frame, encode_result

from polling import wait_until  # tests/polling.py

REPO = Path(__file__).resolve().parents[1]



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

# --- helpers ------------------------------------------------------------------------------------

def worker_config(bundle: Any, ingest: str, name: str) -> DaemonConfig:
    """A daemon whose ingest connects to a sender that binds, with worker name ``name``."""
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": ingest, "bind": False},
        "results": {"endpoint": "tcp://127.0.0.1:0", "worker": name, "sndhwm": 1000},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        "model": {"bundle": str(bundle.path), "intra_op_threads": 1},
        "drift": {"image_estimates": False},
    })


def released(r: Reorderer, pushes: list[tuple[str | None, int | None]], now: float = 0.0) -> list[Any]:
    out: list[Any] = []
    for series, frame in pushes:
        out += r.push(series, frame, (series, frame), 10, now)
    return out


def frames_of(items: list[Any], series: str = "s") -> list[int]:
    return [f for s, f in items if s == series]


# --- worker identity ------------------------------------------------------------------------------

def test_worker_name_config_default_and_validation(tmp_path: Path) -> None:
    assert ResultsConfig().worker is None
    host, _, pid = ResultsConfig().worker_name().rpartition(":")
    assert host and pid == str(os.getpid()) and ResultsConfig().worker_name() == default_worker_name()
    assert len(default_worker_name()) <= 64
    assert ResultsConfig(worker="gpu0-a").worker_name() == "gpu0-a"
    p = tmp_path / "d.toml"
    p.write_text('[results]\nworker = "gpu1 b"\n', encoding="utf-8")
    assert load_config(p).results.worker == "gpu1 b"
    for bad in ("", "   ", "x" * 65, "tab\there", "new\nline"):
        with pytest.raises(ConfigError, match=r"results\.worker must be 1\.\.64 printable characters, got"):
            ResultsConfig(worker=bad)
    p.write_text("[results]\nworker = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"results\.worker must be a string, got 5"):
        load_config(p)


def test_watch_lines_name_the_worker() -> None:
    from fringelive.stream.watch import format_error_line, format_result_line

    line = format_result_line({"series": "s", "frame": 4, "model": "m", "particle_count": 0, "worker": "w1"})
    assert line == "s #4 model=m particles=0 area=? drift=? total=? ms worker=w1"
    assert format_error_line({"reason": "overloaded", "detail": "d", "series": "s", "frame": 5, "worker": "w2"}) \
        == "ERROR overloaded d [s #5] worker=w2"
    assert "worker" not in format_result_line({"series": "s", "frame": 4})


def test_worker_config_example_in_docs_parses(tmp_path: Path) -> None:
    text = (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None
    (tmp_path / "worker-0.toml").write_text(block.group(1), encoding="utf-8")
    cfg = load_config(tmp_path / "worker-0.toml")
    assert cfg.ingest.bind is False and cfg.results.worker == "w0" and cfg.ingest.rcvhwm == 1


def test_worker_in_error_and_result_headers_is_optional_for_decoders() -> None:
    h = decode_error(encode_error("bad_dtype", "why", series="s", frame=3, worker="w1"))
    assert h == {"version": 1, "reason": "bad_dtype", "detail": "why", "series": "s", "frame": 3, "worker": "w1"}
    assert "worker" not in decode_error(encode_error("bad_dtype", "why"))
    mask = np.eye(4, dtype=bool)
    header, m, _ = decode_result(encode_result({"series": "s", "frame": 1, "worker": "w2"}, mask))
    assert header["worker"] == "w2" and (m == mask).all()
    header, _, _ = decode_result(encode_result({"series": "s", "frame": 1}, mask))  # older daemons
    assert "worker" not in header


# --- the reorder logic (pure) ---------------------------------------------------------------------

def test_in_order_frames_pass_at_once() -> None:
    r: Reorderer = Reorderer()
    for i in range(10):
        assert r.push("s", i, ("s", i), 100, 0.0) == [("s", i)]
    st_ = r.stats()
    assert st_["in_order"] == st_["released"] == st_["received"] == 10
    assert st_["held_frames"] == st_["reordered"] == st_["gap_frames"] == 0
    assert r.next_deadline() is None


def test_out_of_order_frames_are_held_and_released_in_order() -> None:
    r: Reorderer = Reorderer()
    out = released(r, [("s", 0), ("s", 2), ("s", 3)])
    assert frames_of(out) == [0] and r.held_frames == 2 and r.held_bytes == 20
    assert r.next_deadline() == pytest.approx(2.0)
    assert frames_of(released(r, [("s", 1)])) == [1, 2, 3]
    assert frames_of(released(r, [("s", 5), ("s", 4)])) == [4, 5]
    s = r.stats()
    assert (s["in_order"], s["reordered"], s["held_frames"], s["held_bytes"], s["max_held_frames"]) == (3, 3, 0, 0, 2)
    assert r.next_deadline() is None  # stale timers are discarded


def test_series_start_waits_for_lower_indices_from_racing_workers() -> None:
    r: Reorderer = Reorderer(ReorderSettings(gap_timeout_s=1.0))
    # frame 0 starts a series at once; a series starting elsewhere waits up to the gap timeout
    assert frames_of(released(r, [("a", 1), ("a", 0)]), "a") == [0, 1]
    assert released(r, [("b", 7)]) == [] and released(r, [("b", 6)], now=0.5) == []
    assert r.poll(0.99) == []
    assert frames_of(r.poll(1.0), "b") == [6, 7]
    assert frames_of(released(r, [("b", 8)], now=1.1), "b") == [8]
    assert released(r, [("b", 5)], now=1.2) == []   # before the settled start: late, not a gap
    s = r.stats()
    assert (s["gap_frames"], s["gaps"], s["late"], s["duplicates"], s["series_started"]) == (0, 0, 1, 0, 2)


def test_gap_given_up_after_timeout_and_late_frame_policy() -> None:
    for late in ("drop", "forward"):
        r: Reorderer = Reorderer(ReorderSettings(gap_timeout_s=2.0, late=late))
        assert frames_of(released(r, [("s", 0), ("s", 2)], now=0.0)) == [0]
        assert released(r, [("s", 3)], now=1.0) == []
        assert r.poll(1.999) == []
        assert frames_of(r.poll(2.0)) == [2, 3]          # 1 given up, 2 and 3 follow
        assert frames_of(released(r, [("s", 4)], now=2.1)) == [4]
        late_out = released(r, [("s", 1)], now=3.0)     # the missing frame turns up after all
        assert frames_of(late_out) == ([1] if late == "forward" else [])
        assert released(r, [("s", 1)], now=3.1) == []    # a second copy is a duplicate
        s = r.stats()
        assert (s["gap_frames"], s["gaps"], s["late"], s["duplicates"]) == (1, 1, 1, 1), late


def test_every_frame_waits_at_most_the_gap_timeout() -> None:
    """Each held frame has its own deadline: a later gap does not restart earlier waits."""
    r: Reorderer = Reorderer(ReorderSettings(gap_timeout_s=2.0))
    released(r, [("s", 0), ("s", 2)], now=0.0)
    released(r, [("s", 4)], now=1.0)
    assert frames_of(r.poll(2.0)) == [2]
    assert r.next_deadline() == pytest.approx(3.0)
    assert frames_of(r.poll(3.0)) == [4]
    assert r.stats()["gap_frames"] == 2 and r.stats()["gaps"] == 2


def test_duplicates_are_dropped_and_counted() -> None:
    r: Reorderer = Reorderer()
    out = released(r, [("s", 0), ("s", 0), ("s", 2), ("s", 2), ("s", 1), ("s", 1), ("s", 2)])
    assert frames_of(out) == [0, 1, 2]
    assert r.stats()["duplicates"] == 4 and r.stats()["late"] == 0


def test_buffer_bounds_give_up_the_oldest_gap() -> None:
    r: Reorderer = Reorderer(ReorderSettings(max_frames=3))
    assert frames_of(released(r, [("s", 0), ("s", 2), ("s", 3), ("s", 4)])) == [0]
    assert frames_of(released(r, [("s", 6)])) == [2, 3, 4]   # 4 held > 3: frame 1 given up
    s = r.stats()
    assert (s["overflow"], s["gap_frames"], s["held_frames"], s["max_held_frames"]) == (1, 1, 1, 4)
    # bytes: one 100-byte frame over a 250-byte budget pushes the oldest gap out
    r = Reorderer(ReorderSettings(max_bytes=250))
    r.push("s", 0, "f0", 100, 0.0)
    assert r.push("s", 2, "f2", 100, 0.0) == [] and r.push("s", 4, "f4", 100, 0.0) == []
    assert r.push("s", 6, "f6", 100, 0.0) == ["f2"]
    assert r.held_bytes == 200 and r.stats()["overflow"] == 1


def test_several_series_are_independent_and_unordered_messages_pass() -> None:
    r: Reorderer = Reorderer(ReorderSettings(gap_timeout_s=1.0))
    out = released(r, [("a", 0), ("b", 1), ("a", 2), ("b", 0), (None, None), ("a", 1), ("c", None)])
    assert frames_of(out, "a") == [0, 1, 2] and frames_of(out, "b") == [0, 1]
    assert out.index((None, None)) < out.index(("a", 1)) and ("c", None) in out
    assert r.stats()["unordered"] == 2 and r.stats()["series"] == 2


def test_idle_series_are_forgotten_and_restart_anywhere() -> None:
    r: Reorderer = Reorderer(ReorderSettings(gap_timeout_s=1.0, series_idle_s=5.0, max_series=2))
    released(r, [("a", 0), ("a", 1)], now=0.0)
    assert r.poll(4.9) == [] and r.stats()["series"] == 1
    r.poll(5.0)
    assert r.stats()["series"] == 0 and r.stats()["series_forgotten"] == 1
    assert frames_of(released(r, [("a", 0)], now=6.0), "a") == [0]   # a new acquisition under the same name
    # max_series: the least recently active series is flushed and forgotten
    released(r, [("b", 0), ("b", 2)], now=6.0)
    assert frames_of(released(r, [("a", 1)], now=6.05), "a") == [1]   # "b" is now the least recently active
    out = released(r, [("c", 0)], now=6.1)
    assert out == [("b", 2), ("c", 0)] and r.stats()["series"] == 2


def test_flush_releases_everything_held_in_order() -> None:
    r: Reorderer = Reorderer()
    released(r, [("a", 0), ("a", 3), ("a", 2), ("b", 9), ("b", 8)])
    out = r.flush()
    assert frames_of(out, "a") == [2, 3] and frames_of(out, "b") == [8, 9]
    assert r.held_frames == 0 and r.stats()["gap_frames"] == 1 and r.next_deadline() is None


@pytest.mark.parametrize("kwargs, match", [
    ({"gap_timeout_s": 0}, "gap_timeout_s must be a finite number of seconds > 0, got 0"),
    ({"gap_timeout_s": float("inf")}, "gap_timeout_s must be a finite number of seconds > 0, got inf"),
    ({"max_frames": 0}, "max_frames must be a positive integer, got 0"),
    ({"max_bytes": 1.5}, "max_bytes must be a positive integer, got 1.5"),
    ({"late": "keep"}, r"late must be one of \['drop', 'forward'\], got 'keep'"),
    ({"series_idle_s": 1.0}, r"series_idle_s must be > gap_timeout_s \(2.0 s\), got 1.0"),
])
def test_settings_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReorderSettings(**kwargs)
    with pytest.raises(ValueError, match=r"frame must be an integer >= 0, got -1"):
        Reorderer().push("s", -1, None, 0, 0.0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(starts=st.lists(st.sampled_from([0, 0, 1, 17]), min_size=1, max_size=3),
       sizes=st.lists(st.integers(1, 40), min_size=3, max_size=3), window=st.integers(1, 12),
       rnd=st.randoms(use_true_random=False))
def test_property_any_permutation_within_the_window_comes_out_sorted(starts: list[int], sizes: list[int],
                                                                     window: int, rnd: Any) -> None:
    """Frames shuffled within blocks of ``window`` (so at most ``window - 1`` wait per series),
    series interleaved at random: every frame comes out exactly once, in order, without a gap;
    series starting at 0 without any timeout, the others once their start settled."""
    queues: dict[str, list[int]] = {}
    for k, (start, n) in enumerate(zip(starts, sizes)):
        order: list[int] = []
        for b in range(start, start + n, window):
            block = list(range(b, min(b + window, start + n)))
            rnd.shuffle(block)
            order += block
        queues[f"s{k}"] = order
    bound = sum(window - 1 if start == 0 else n for start, n in zip(starts, sizes))
    r: Reorderer = Reorderer(ReorderSettings(max_frames=max(1, bound), gap_timeout_s=1.0))
    expected = {name: sorted(q) for name, q in queues.items()}
    out: list[Any] = []
    t = 0.0
    while any(queues.values()):
        name = rnd.choice(sorted(n for n, q in queues.items() if q))
        frame = queues[name].pop(0)
        out += r.push(name, frame, (name, frame), 1, t)
        assert r.held_frames <= bound
        t += 0.001
    assert r.stats()["overflow"] == 0
    before_timeout = list(out)
    out += r.poll(t + 1.0)  # only series that did not start at 0 wait for their start to settle
    for name, frames in expected.items():
        assert frames_of(out, name) == frames
        if frames[0] == 0:
            assert frames_of(before_timeout, name) == frames
    s = r.stats()
    assert s["released"] == s["received"] == sum(map(len, expected.values()))
    assert (s["gap_frames"], s["duplicates"], s["late"], s["held_frames"]) == (0, 0, 0, 0)


@settings(max_examples=100, deadline=None)
@given(indices=st.lists(st.integers(0, 60), min_size=1, max_size=80), seed=st.integers(0, 2**32 - 1))
def test_property_losses_and_duplicates_are_counted_nothing_else_lost(indices: list[int], seed: int) -> None:
    """Any arrival order with missing frames and repeats: the output is strictly increasing, holds
    every distinct index that arrived, and the counters add up."""
    rng = np.random.default_rng(seed)
    order = [indices[i] for i in rng.permutation(len(indices))]
    r: Reorderer = Reorderer(ReorderSettings(max_frames=100, gap_timeout_s=1.0))
    out: list[Any] = []
    for i, f in enumerate(order):
        out += r.push("s", f, ("s", f), 1, i * 1e-4)
    out += r.poll(10.0)
    got = frames_of(out)
    kept = sorted(set(indices))
    assert got == kept
    s = r.stats()
    assert s["duplicates"] == len(indices) - len(kept) and s["late"] == 0
    assert s["gap_frames"] == kept[-1] - kept[0] + 1 - len(kept)
    assert s["released"] == len(kept) and s["held_frames"] == 0


# --- the merger over sockets ----------------------------------------------------------------------

def _result(series: str, frame: int, worker: str, seed: int = 0) -> list[bytes]:
    mask = np.random.default_rng(seed).random((8, 8)) > 0.5
    return encode_result({"series": series, "frame": frame, "worker": worker, "model": "m"}, mask)


class Publishers:
    """``n`` plain PUB sockets standing in for workers, and a SUB on the merger's output."""

    def __init__(self, ctx: zmq.Context, n: int) -> None:
        self.pubs = []
        for _ in range(n):
            pub = ctx.socket(zmq.PUB)
            pub.linger = 0
            pub.bind("tcp://127.0.0.1:0")
            self.pubs.append(pub)
        self.endpoints = [p.getsockopt_string(zmq.LAST_ENDPOINT) for p in self.pubs]
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.subscribe(b"")

    def connect(self, endpoint: str) -> None:
        self.sub.connect(endpoint)
        # slow joiners: every path publisher -> merger -> us is live once a fresh series
        # (frame 0: released at once) sent on each publisher comes out
        seen: set[int] = set()
        t_end = time.monotonic() + 15.0
        i = 0
        while len(seen) < len(self.pubs):
            assert time.monotonic() < t_end, f"merger paths never came up ({sorted(seen)} of {len(self.pubs)})"
            for k, pub in enumerate(self.pubs):
                pub.send_multipart(encode_error("bad_parts", "sync", series=f"sync-{k}-{i}", frame=0))
            i += 1
            while self.sub.poll(50):
                h = decode_error(self.sub.recv_multipart())
                seen.add(int(h["series"].split("-")[1]))
        time.sleep(0.2)
        while self.sub.poll(50):
            self.sub.recv_multipart()

    def recv(self, timeout: float = 10.0) -> list[bytes] | None:
        return self.sub.recv_multipart() if self.sub.poll(int(timeout * 1000)) else None

    def close(self) -> None:
        for s in (*self.pubs, self.sub):
            s.close(linger=0)


def test_result_merger_orders_passes_bytes_through_and_exports_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from fringelive.stream.merger import ResultMerger

    ctx = zmq.Context()
    pubs = Publishers(ctx, 2)
    registry = CollectorRegistry()
    try:
        with ResultMerger(pubs.endpoints, "tcp://127.0.0.1:0", ReorderSettings(gap_timeout_s=0.5),
                          registry=registry) as merger:
            assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", merger.endpoint or "")
            pubs.connect(merger.endpoint)
            sent = {1: _result("x", 1, "A", 1), 0: _result("x", 0, "B", 0), 3: _result("x", 3, "A", 3),
                    2: encode_error("pipeline_error", "boom", series="x", frame=2, worker="B")}
            a, b = pubs.pubs
            for f, pub in ((1, a), (3, a)):
                pub.send_multipart(sent[f])
            time.sleep(0.1)  # 1 and 3 wait for 0 and 2
            b.send_multipart(sent[0])
            b.send_multipart(sent[2])
            b.send_multipart(sent[2])               # duplicate
            b.send_multipart([b"result", b"\xc1", b""])  # unreadable: dropped, counted
            got = [pubs.recv() for _ in range(4)]
            assert got == [sent[0], sent[1], sent[2], sent[3]]   # byte for byte, in order
            a.send_multipart(_result("x", 5, "A", 5))            # 4 never comes
            t0 = time.monotonic()
            late5 = pubs.recv(5.0)
            assert late5 is not None and decode_result(late5)[0]["frame"] == 5
            assert 0.3 < time.monotonic() - t0 < 3.0
            text = generate_latest(registry).decode()
        stats = merger.stats()   # final: every released message was sent
        assert stats["duplicates"] == 1 and stats["malformed"] == 1 and stats["gap_frames"] == 1
        assert stats["workers"]["A"] == 3 and stats["workers"]["B"] == 3
        assert stats["published"] == stats["released"]
        for line in ("fringelive_merge_duplicates_total 1.0", "fringelive_merge_gap_frames_total 1.0",
                     "fringelive_merge_malformed_total 1.0", 'fringelive_merge_worker_messages_total{worker="A"} 3.0',
                     "fringelive_merge_held_frames 0.0"):
            assert line in text, line
    finally:
        pubs.close()
        ctx.term()


def test_result_merger_checks_arguments() -> None:
    from fringelive.stream.merger import ResultMerger

    with pytest.raises(ValueError, match="at least one"):
        ResultMerger([])
    with pytest.raises(ValueError, match=r"merge source connects, so it needs a concrete host and port, "
                                         r"got 'tcp://127.0.0.1:0'"):
        ResultMerger(["tcp://127.0.0.1:0"])
    with pytest.raises(ValueError, match="must be distinct, got 'tcp://127.0.0.1:9' twice"):
        ResultMerger(["tcp://127.0.0.1:9", "tcp://127.0.0.1:9"])
    with pytest.raises(ValueError, match="hwm must be a positive number of messages, got 0"):
        ResultMerger(["tcp://127.0.0.1:9"], hwm=0)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fringelive.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_merge_command_runs_until_sigint_and_prints_counters() -> None:
    ctx = zmq.Context()
    pubs = Publishers(ctx, 2)
    proc = _cli("merge", *[a for ep in pubs.endpoints for a in ("--from", ep)], "--endpoint", "tcp://127.0.0.1:0",
                "--gap-timeout", "0.5", "--metrics-port", "0")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.match(r"fringelive merge: publishing on (tcp://127\.0\.0\.1:\d+); from ", first)
        assert m, first + (proc.stderr.read() if proc.poll() is not None else "")
        url = re.match(r"fringelive merge: metrics at (http://\S+)", proc.stdout.readline()).group(1)
        pubs.connect(m.group(1))
        a, b = pubs.pubs
        b.send_multipart(_result("y", 1, "B"))
        a.send_multipart(_result("y", 0, "A"))
        assert [decode_result(pubs.recv())[0]["frame"] for _ in range(2)] == [0, 1]
        b.send_multipart(_result("y", 3, "B"))  # 2 is lost: given up after 0.5 s
        assert decode_result(pubs.recv(5.0))[0]["frame"] == 3
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "fringelive_merge_gap_frames_total 1.0" in metrics
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pubs.close()
        ctx.term()
    assert proc.returncode == 0, err
    assert re.search(r"published \d+ .*gaps 1 \(1 frames, 0 on overflow\), duplicates 0, late 0, malformed 0", out), out
    assert re.search(r"messages per worker: .*A: \d+, B: \d+", out), out


def test_merge_command_usage_errors() -> None:
    from fringelive import cli

    assert cli.main(["merge", "--from", "tcp://127.0.0.1:*"]) == 2
    assert cli.main(["merge", "--from", "tcp://127.0.0.1:9", "--gap-timeout", "5", "--series-idle", "1"]) == 2


# --- several daemons on one stream ----------------------------------------------------------------

def sync_workers(push: zmq.Socket, subs: list[zmq.Socket], names: set[str], timeout: float = 30.0) -> None:
    """Until every SUB in ``subs`` has seen an event from every worker in ``names``: push junk
    (no ``shape``: rejected at once, an error event naming the worker) in fresh series (frame 0,
    so the merger releases it at once). Then every worker is connected to the PUSH (round robin
    reaches it), and every PUB → SUB path is live."""
    seen = [set() for _ in subs]
    t_end = time.monotonic() + timeout
    i = 0
    while any(s != names for s in seen):
        assert time.monotonic() < t_end, f"workers never all came up: {seen}"
        push.send_multipart([msgpack.packb({"version": 1, "series": f"sync-{i}", "frame": 0}), b""])
        i += 1
        for k, sub in enumerate(subs):
            while sub.poll(20):
                h = decode_error(sub.recv_multipart())
                seen[k].add(h["worker"])
    time.sleep(0.3)
    for sub in subs:
        while sub.poll(50):
            sub.recv_multipart()


def test_three_daemons_on_one_bound_push_merged_in_frame_order(tiny_bundle: Any) -> None:
    from fringelive.stream.merger import ResultMerger
    from fringelive.daemon.server import Daemon

    n_frames, side = 30, 256
    names = {"w0", "w1", "w2"}
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.bind("tcp://127.0.0.1:0")
    ingest = push.getsockopt_string(zmq.LAST_ENDPOINT)
    daemons = [Daemon(worker_config(tiny_bundle, ingest, f"w{i}")) for i in range(3)]
    merged = ctx.socket(zmq.SUB)
    direct = ctx.socket(zmq.SUB)   # straight from the workers: to check the merger passes bytes through
    for s in (merged, direct):
        s.linger = 0
        s.rcvhwm = 10_000
        s.subscribe(b"")
    try:
        for d in daemons:
            d.start()
        merger = ResultMerger([d.endpoints["results"] for d in daemons], "tcp://127.0.0.1:0",
                              ReorderSettings(gap_timeout_s=20.0)).start()
        try:
            merged.connect(merger.endpoint)
            for d in daemons:
                direct.connect(d.endpoints["results"])
            sync_workers(push, [merged, direct], names)
            rng = np.random.default_rng(0)
            for i in range(n_frames):
                pixels = rng.poisson(100.0, (side, side)).astype(np.uint16)
                push.send_multipart(encode_frame(pixels, series="run", frame=i, pixel_size_nm=0.02))
            out: list[list[bytes]] = []
            t_end = time.monotonic() + 60.0
            while len(out) < n_frames:
                assert merged.poll(int(max(0.01, t_end - time.monotonic()) * 1000)), f"{len(out)} of {n_frames}"
                parts = merged.recv_multipart()
                assert parts[0] == b"result", decode_error(parts)
                if decode_result(parts)[0]["series"] == "run":
                    out.append(parts)
            by_frame: dict[int, list[bytes]] = {}
            while len(by_frame) < n_frames:
                assert direct.poll(10_000), f"direct: {len(by_frame)} of {n_frames}"
                parts = direct.recv_multipart()
                h = decode_result(parts)[0]
                if h["series"] == "run":
                    by_frame[h["frame"]] = parts
            stats = merger.stats()
        finally:
            merger.close()
        headers = [decode_result(p)[0] for p in out]
        assert [h["frame"] for h in headers] == list(range(n_frames))   # once each, in order
        workers = [h["worker"] for h in headers]
        assert set(workers) <= names and len(set(workers)) > 1, workers
        assert out == [by_frame[i] for i in range(n_frames)]               # byte for byte
        assert (stats["gap_frames"], stats["duplicates"], stats["late"], stats["malformed"]) == (0, 0, 0, 0)
        counts = [d.metrics.counts() for d in daemons]
        assert sum(c["processed"] for c in counts) == n_frames
        assert [workers.count(f"w{i}") for i in range(3)] == [c["processed"] for c in counts]
        assert all(d.status()["worker"] == f"w{i}" for i, d in enumerate(daemons))
    finally:
        for d in daemons:
            d.stop(raise_errors=False)
        for s in (merged, direct, push):
            s.close(linger=0)
        ctx.term()


def test_send_bind_spreads_frames_over_connecting_daemons(tiny_bundle: Any, tmp_path: Path) -> None:
    """``fringelive send --bind --wait-workers 2``: two daemons with ``ingest.bind = false``
    connect to the sender, which waits for both and deals the frames among them."""
    from fringelive.daemon.server import Daemon

    n = 12
    stack = np.random.default_rng(1).poisson(100.0, (n, 128, 128)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", stack)
    proc = _cli("send", str(tmp_path / "stack.npy"), "--bind", "--endpoint", "tcp://127.0.0.1:0",
                "--wait-workers", "2", "--series", "s", "--meta", "pixel_size_nm=0.02", "--timeout", "60")
    daemons: list[Daemon] = []
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.match(r"send: bound (tcp://127\.0\.0\.1:\d+), waiting for 2 worker\(s\)", first)
        assert m, first + (proc.stderr.read() if proc.poll() is not None else "")
        for i in range(2):
            daemons.append(Daemon(worker_config(tiny_bundle, m.group(1), f"w{i}")).start())
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"sent {n} frames" in out
        wait_until(lambda: sum(d.metrics.counts()["processed"] for d in daemons) == n, 60.0, "all frames processed")
        per_daemon = [d.metrics.counts()["processed"] for d in daemons]
        assert all(p > 0 for p in per_daemon), per_daemon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for d in daemons:
            d.stop(raise_errors=False)


def test_send_bind_usage_errors(tmp_path: Path) -> None:
    from fringelive import cli

    np.save(tmp_path / "f.npy", np.zeros((4, 4), np.uint16))
    assert cli.main(["send", str(tmp_path / "f.npy"), "--wait-workers", "2"]) == 2
    # nobody connects within the timeout: exit 1
    assert cli.main(["send", str(tmp_path / "f.npy"), "--bind", "--endpoint", "tcp://127.0.0.1:0",
                     "--wait-workers", "1", "--timeout", "0.3"]) == 1
