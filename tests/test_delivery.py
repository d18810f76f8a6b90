"""Delivery across a daemon restart (issue #13), over real ZeroMQ on 127.0.0.1 with the real ONNX
Runtime pipeline of the ``tiny_bundle`` fixture: the plain PUSH shutdown drain, per-daemon
sequence numbers, and the results journal with replay.

The restart sequence: one persistent PUSH sender pushes 150 frames as fast as back-pressure
lets it; the first daemon stops (what SIGTERM does) after ~30 results; a second daemon binds the
same endpoints; the sender's socket reconnects by itself and goes on."""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.protocol import decode_error, decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.stream.send import DEFAULT_SEND_HWM, DEFAULT_SNDBUF_BYTES

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

SIDE = 128       # px: 32 KiB uint16 frames, the "small frames" of the issue
N_FRAMES = 150
STOP_AFTER = 30  # results of the first daemon before it is stopped


def make_config(bundle: Any, **sections: dict[str, Any]) -> DaemonConfig:
    base: dict[str, dict[str, Any]] = {
        "ingest": {"endpoint": "tcp://127.0.0.1:0"},
        "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        "model": {"bundle": str(getattr(bundle, "path", bundle)), "backend": "onnxruntime", "intra_op_threads": 1},
        "lifecycle": {"drain_timeout_s": 30.0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return DaemonConfig.from_dict(base)


def frame_msg(i: int, series: str = "restart") -> list[bytes]:
    pixels = np.random.default_rng(i).poisson(100.0, (SIDE, SIDE)).astype(np.uint16)
    return encode_frame(pixels, series=series, frame=i, pixel_size_nm=0.02)


def assert_identity(counts: dict[str, Any]) -> None:
    assert counts["in_flight"] == 0, counts
    assert counts["received"] == counts["processed"] + sum(counts["dropped"].values()) + sum(counts["rejected"].values())


class Sink:
    """A SUB socket collecting every result/error (decoded headers) on a background thread."""

    def __init__(self, endpoint: str, reconnect_ivl_ms: int = 10) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.rcvhwm = 0
        self.sock.reconnect_ivl = reconnect_ivl_ms
        self.sock.subscribe(b"")
        self.sock.connect(endpoint)
        self.headers: list[dict[str, Any]] = []
        self.raw: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            parts = self.sock.recv_multipart()
            self.raw.append(parts)
            h = decode_result(parts)[0] if parts[0] == b"result" else {**decode_error(parts), "_error": True}
            self.headers.append(h)

    def take(self) -> list[list[bytes]]:
        """The raw messages received so far (and forget them)."""
        out, self.raw = self.raw, []
        return out

    def results(self) -> list[dict[str, Any]]:
        return [h for h in self.headers if not h.get("_error")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)


class PersistentSender(threading.Thread):
    """One PUSH socket kept open across the restart, as ``fringelive send`` configures it
    (SNDHWM, SNDBUF); a send that times out while no daemon is up is retried."""

    def __init__(self, endpoint: str, n: int) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.sndhwm = DEFAULT_SEND_HWM
        self.sock.sndbuf = DEFAULT_SNDBUF_BYTES
        self.sock.sndtimeo = 200
        self.sock.reconnect_ivl = 300  # ms: the test's subscriber (10 ms) is back first
        self.sock.connect(endpoint)
        self.n, self.sent = n, 0
        self.stop = threading.Event()

    def run(self) -> None:
        msg = None
        while self.sent < self.n and not self.stop.is_set():
            msg = msg or frame_msg(self.sent)
            try:
                self.sock.send_multipart(msg)
            except zmq.Again:
                continue
            self.sent += 1
            msg = None

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.sock.close(linger=0)


def wait_for(cond: Any, timeout: float, what: str) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t_end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow  # ~40 s on a loaded 2-core box
def test_restart_plain_push_loses_at_most_3_of_150_and_duplicates_none(tiny_bundle: Any) -> None:
    d1 = Daemon(make_config(tiny_bundle)).start()
    ingest, results_ep = d1.endpoints["ingest"], d1.endpoints["results"]
    sink = Sink(results_ep)
    time.sleep(0.3)  # slow joiner
    sender = PersistentSender(ingest, N_FRAMES)
    sender.start()
    d2 = None
    try:
        wait_for(lambda: len(sink.results()) >= STOP_AFTER, 120, f"{STOP_AFTER} results")
        counts1 = d1.stop()  # what SIGTERM on `fringelive serve` does
        assert_identity(counts1)
        d2 = Daemon(make_config(tiny_bundle, ingest={"endpoint": ingest}, results={"endpoint": results_ep})).start()
        wait_for(lambda: sender.sent >= N_FRAMES, 180, "the sender to send every frame")
        wait_for(lambda: d2.metrics.counts()["in_flight"] == 0, 120, "the second daemon to idle")
        time.sleep(1.0)  # the last publications reach the subscriber
        counts2 = d2.stop()
        assert_identity(counts2)
    finally:
        sender.close()
        sink.close()
        d1.stop(raise_errors=False)
        if d2 is not None:
            d2.stop(raise_errors=False)
    frames = collections.Counter(h["frame"] for h in sink.headers if h.get("frame") is not None)
    duplicated = {f: n for f, n in frames.items() if n > 1}
    unaccounted = sorted(set(range(N_FRAMES)) - set(frames))
    received = counts1["received"] + counts2["received"]
    print(f"\nplain PUSH restart: daemon 1 {counts1}, daemon 2 {counts2}; unaccounted {unaccounted}")
    assert duplicated == {}
    assert received == len(frames) == N_FRAMES - len(unaccounted)
    assert len(unaccounted) <= 3, unaccounted


# --- sequence numbers and the results journal --------------------------------------------------

def journal_config(bundle: Any, path: Any, **journal: Any) -> DaemonConfig:
    return make_config(bundle, journal={"enabled": True, "path": str(path), **journal})


def send_all(endpoint: str, msgs: list[list[bytes]]) -> None:
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.sndtimeo = 30_000
    push.connect(endpoint)
    for m in msgs:
        push.send_multipart(m)
    push.close(linger=30_000)


def wait_processed(d: Daemon, n: int, timeout: float = 120) -> dict[str, Any]:
    wait_for(lambda: d.metrics.counts()["received"] >= n and d.metrics.counts()["in_flight"] == 0, timeout,
             f"{n} messages accounted for")
    counts = d.metrics.counts()
    assert_identity(counts)
    return counts


def test_sequence_numbers_and_late_subscriber_replays_from_the_journal(tiny_bundle: Any, tmp_path: Any,
                                                                       capsys: Any) -> None:
    """Nobody subscribed while 12 frames and 3 malformed messages went through: ``watch --since 1``
    recovers all 15 (seq 1..15, results and errors), then goes on with live ones."""
    from fringelive.cli import main
    from fringelive.stream.catchup import header_of, replay, replay_chunk

    msgs = [frame_msg(i, series="late") for i in range(12)]
    for k in (3, 7, 11):
        msgs.insert(k, [b"\x81\xa7version\x01", b""])  # missing_key: an error event with a seq too
    with Daemon(journal_config(tiny_bundle, tmp_path / "j" / "results.sqlite")) as d:
        send_all(d.endpoints["ingest"], msgs)
        wait_processed(d, 15)
        status = d.status()
        assert status["last_seq"] == 15 and status["journal"]["entries"] == 15 and not status["journal"]["degraded"]
        chunk = replay_chunk(d.endpoints["control"], 4, limit=5)
        assert [s for s, _ in chunk["messages"]] == [4, 5, 6, 7, 8] and chunk["next"] == 9 and not chunk["complete"]
        got = list(replay(d.endpoints["control"], 1, limit=4))
        assert [s for s, _ in got] == list(range(1, 16))
        assert [header_of(p)["seq"] for _, p in got] == list(range(1, 16))
        assert sum(p[0] == b"error" for _, p in got) == 3
        frames = sorted(header_of(p)["frame"] for _, p in got if p[0] == b"result")
        assert frames == list(range(12))
        code = main(["watch", "--endpoint", d.endpoints["results"], "--control", d.endpoints["control"],
                     "--since", "1", "--count", "15", "--timeout", "20"])
        out = capsys.readouterr()
        assert code == 0, out.err
        lines = out.out.strip().splitlines()
        assert len(lines) == 15 and sum(line.startswith("ERROR") for line in lines) == 3
        assert "replayed 15 message(s) from seq 1" in out.err
    # a restarted daemon goes on from the journal's last seq
    with Daemon(journal_config(tiny_bundle, tmp_path / "j" / "results.sqlite")) as d2:
        assert d2.status()["last_seq"] == 15
        send_all(d2.endpoints["ingest"], [frame_msg(99, series="late")])
        wait_processed(d2, 1)
        assert [s for s, _ in replay(d2.endpoints["control"], 16)] == [16]


def test_replay_refusals_name_the_problem(tiny_bundle: Any, tmp_path: Any) -> None:
    from fringelive.daemon.control import control_request

    with Daemon(make_config(tiny_bundle)) as d:  # no journal
        reply = control_request(d.endpoints["control"], "replay", since=1)
        assert reply["ok"] is False and "journal is not enabled" in reply["error"]
        reply = control_request(d.endpoints["control"], "replay", since=-3)
        assert reply["ok"] is False and "-3" in reply["error"]
        reply = control_request(d.endpoints["control"], "replay", since=1, limit=0)
        assert reply["ok"] is False and "limit" in reply["error"]


def test_journal_caps_by_size_and_age(tmp_path: Any) -> None:
    from fringelive.daemon.journal import JournalConfig, ResultsJournal

    j = ResultsJournal(JournalConfig(enabled=True, path=tmp_path / "j.sqlite", max_bytes=20_000, max_age_s=3600))
    for seq in range(1, 201):
        j.append(seq, [b"result", b"\x80", bytes(1000)])
    assert j.total_bytes <= 20_000 + 64 * 1100 and j.last_seq == 200
    kept = j.read(1, limit=1000)["messages"]
    assert kept[-1][0] == 200 and [s for s, _ in kept] == list(range(kept[0][0], 201))
    j.close()
    j = ResultsJournal(JournalConfig(enabled=True, path=tmp_path / "j.sqlite", max_bytes=20_000, max_age_s=1e-6))
    assert j.entries == 0 and j.last_seq == 200  # aged out at open; seq still goes on
    j.close()


class CatchingUpSubscriber:
    """A subscriber that orders and completes what it gets by ``seq`` (stream/catchup.GapFiller),
    and can be disconnected for a while."""

    def __init__(self, d: Daemon) -> None:
        from fringelive.stream.catchup import GapFiller

        self.d = d
        self.filler = GapFiller(d.endpoints["control"], report=lambda line: None)
        self.seqs: list[int] = []
        self.sink: Sink | None = None
        self.connect()

    def connect(self) -> None:
        self.sink = Sink(self.d.endpoints["results"])

    def disconnect(self) -> None:
        assert self.sink is not None
        self.pump()
        self.sink.close()
        self.sink = None

    def pump(self) -> None:
        """Handle what arrived live (through the gap filler), then a missed tail."""
        from fringelive.stream.catchup import header_of

        raw = self.sink.take() if self.sink is not None else []
        out = [m for parts in raw for m in self.filler.feed(parts)] + self.filler.idle()
        self.seqs.extend(header_of(p)["seq"] for p in out)


@pytest.mark.slow  # 10 s away by design
def test_subscriber_disconnected_for_10_s_recovers_every_result_from_the_journal(tiny_bundle: Any,
                                                                                 tmp_path: Any) -> None:
    pytest.importorskip("sqlite3")
    with Daemon(journal_config(tiny_bundle, tmp_path / "results.sqlite")) as d:
        sub = CatchingUpSubscriber(d)
        time.sleep(0.3)
        send_all(d.endpoints["ingest"], [frame_msg(i, series="blip") for i in range(10)])
        wait_processed(d, 10)
        time.sleep(0.3)
        sub.disconnect()
        t0 = time.monotonic()
        send_all(d.endpoints["ingest"], [frame_msg(i, series="blip") for i in range(10, 25)])
        wait_processed(d, 25)
        time.sleep(max(0.0, 10.0 - (time.monotonic() - t0)))  # away for 10 s
        sub.connect()
        time.sleep(0.3)
        send_all(d.endpoints["ingest"], [frame_msg(i, series="blip") for i in range(25, 30)])
        wait_processed(d, 30)
        time.sleep(0.5)
        sub.pump()
        sub.disconnect()
        assert sub.seqs == list(range(1, 31))
        assert sub.filler.gaps and sub.filler.unrecovered == 0 and sub.filler.recovered >= 15


@pytest.fixture()
def tiny_tmpfs(tmp_path: Any) -> Any:
    """A 64 KiB tmpfs (a real full disk), or skip when this process may not mount one."""
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_journal_on_a_full_disk_degrades_and_the_daemon_keeps_serving(tiny_bundle: Any, tiny_tmpfs: Any) -> None:
    from fringelive.daemon.control import control_request
    from fringelive.stream.health import HealthError, HealthTargets, check_health

    n = 40  # ~3 KB of mask + header each: far more than 64 KiB with SQLite's pages and WAL
    cfg = journal_config(tiny_bundle, tiny_tmpfs / "results.sqlite", max_bytes=10 * 2**20)
    with Daemon(cfg) as d:
        sink = Sink(d.endpoints["results"])
        time.sleep(0.3)
        try:
            send_all(d.endpoints["ingest"], [frame_msg(i, series="full") for i in range(n)])
            counts = wait_processed(d, n)
            wait_for(lambda: len(sink.results()) >= n, 30, "every result published")
        finally:
            sink.close()
        assert counts["processed"] == n
        assert [h["seq"] for h in sink.headers] == list(range(1, n + 1))  # published all the same
        status = control_request(d.endpoints["control"], "status")
        journal = status["journal"]
        assert journal["degraded"] is True and journal["write_errors"] > 0 and "full" in journal["last_error"]
        assert d.registry.get_sample_value("fringelive_journal_degraded") == 1.0
        with pytest.raises(HealthError, match="journal .* degraded"):
            check_health(HealthTargets(control=d.endpoints["control"]))


# --- acknowledged ingest ------------------------------------------------------------------------

class AckSenderThread(threading.Thread):
    def __init__(self, endpoint: str, n: int) -> None:
        from fringelive.stream.ack_send import AckSender

        super().__init__(daemon=True)
        self.sender = AckSender(endpoint, resend_s=5.0)
        self.n, self.error = n, None

    def run(self) -> None:
        try:
            for i in range(self.n):
                self.sender.send(("restart", i), frame_msg(i), timeout_s=120)
            self.sender.finish(timeout_s=120)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def journal_results(control: str) -> collections.Counter:
    from fringelive.stream.catchup import header_of, replay

    return collections.Counter(header_of(p)["frame"] for _, p in replay(control, 1) if p[0] == b"result")


@pytest.mark.slow  # ~40 s on a loaded 2-core box
def test_restart_ack_mode_sigterm_every_frame_gets_one_result(tiny_bundle: Any, tmp_path: Any) -> None:
    jpath = tmp_path / "results.sqlite"
    d1 = Daemon(make_config(tiny_bundle, ingest={"mode": "ack"}, journal={"enabled": True, "path": str(jpath)})).start()
    ingest, results_ep = d1.endpoints["ingest"], d1.endpoints["results"]
    sink = Sink(results_ep)
    time.sleep(0.3)
    t = AckSenderThread(ingest, N_FRAMES)
    t.start()
    d2 = None
    try:
        wait_for(lambda: len(sink.results()) >= STOP_AFTER, 120, f"{STOP_AFTER} results")
        counts1 = d1.stop()
        assert_identity(counts1)
        d2 = Daemon(make_config(tiny_bundle, ingest={"endpoint": ingest, "mode": "ack"},
                                results={"endpoint": results_ep},
                                journal={"enabled": True, "path": str(jpath)})).start()
        t.join(240)
        assert not t.is_alive() and t.error is None, t.error
        results = journal_results(d2.endpoints["control"])
        counts2 = d2.metrics.counts()
        dup2 = d2.registry.get_sample_value("fringelive_frames_duplicate_total")
    finally:
        sink.close()
        t.sender.close()
        d1.stop(raise_errors=False)
        if d2 is not None:
            d2.stop(raise_errors=False)
    s = t.sender
    print(f"\nack restart (SIGTERM): daemon 1 {counts1}, daemon 2 {counts2}, duplicates counted by daemon 2: {dup2}; "
          f"sender sent {s.sent} resent {s.resent} done {s.done} duplicate acks {s.duplicates} reconnects {s.reconnects}")
    assert sorted(results) == list(range(N_FRAMES))       # 150 of 150 got a result
    assert max(results.values()) == 1                      # each exactly once: resends were counted duplicates
    assert s.done == N_FRAMES and not s.pending


def free_tcp_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.slow  # ~60 s on a loaded 2-core box
def test_restart_ack_mode_sigkill_every_frame_gets_one_result(tiny_bundle: Any, tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys

    jpath = tmp_path / "results.sqlite"
    ingest, results_ep, control = free_tcp_endpoint(), free_tcp_endpoint(), free_tcp_endpoint()
    (tmp_path / "serve.toml").write_text(
        f'[ingest]\nendpoint = "{ingest}"\nmode = "ack"\n[results]\nendpoint = "{results_ep}"\n'
        f'[control]\nendpoint = "{control}"\n[metrics]\nenabled = false\n'
        f'[model]\nbundle = "{tiny_bundle.path}"\nbackend = "onnxruntime"\nintra_op_threads = 1\n'
        f'[journal]\nenabled = true\npath = "{jpath}"\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fringelive.cli", "serve", "--config", str(tmp_path / "serve.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    d2 = t = sink = None
    try:
        while "control" not in (line := proc.stdout.readline()):
            assert line, "serve exited early"
        sink = Sink(results_ep)
        time.sleep(0.3)
        t = AckSenderThread(ingest, N_FRAMES)
        t.start()
        wait_for(lambda: len(sink.results()) >= STOP_AFTER, 180, f"{STOP_AFTER} results")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        d2 = Daemon(make_config(tiny_bundle, ingest={"endpoint": ingest, "mode": "ack"}, results={"endpoint": results_ep},
                                journal={"enabled": True, "path": str(jpath)})).start()
        t.join(240)
        assert not t.is_alive() and t.error is None, t.error
        results = journal_results(d2.endpoints["control"])
        counts2 = d2.metrics.counts()
        dup2 = d2.registry.get_sample_value("fringelive_frames_duplicate_total")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if sink is not None:
            sink.close()
        if t is not None:
            t.sender.close()
        if d2 is not None:
            d2.stop(raise_errors=False)
    s = t.sender
    print(f"\nack restart (SIGKILL): daemon 2 {counts2}, duplicates counted by daemon 2: {dup2}; sender sent {s.sent} "
          f"resent {s.resent} done {s.done} duplicate acks {s.duplicates} reconnects {s.reconnects}")
    assert sorted(results) == list(range(N_FRAMES))       # 150 of 150 got a result across the two daemons
    assert max(results.values()) == 1                      # resent frames the first daemon had done: counted duplicates
    assert s.done == N_FRAMES and not s.pending


def test_send_ack_gets_every_frame_done_and_a_resend_is_a_counted_duplicate(tiny_bundle: Any, tmp_path: Any,
                                                                            capsys: Any) -> None:
    from fringelive.cli import main

    stack = tmp_path / "stack.npy"
    np.save(stack, np.random.default_rng(0).poisson(100.0, (5, SIDE, SIDE)).astype(np.uint16))
    with Daemon(make_config(tiny_bundle, ingest={"mode": "ack"})) as d:
        argv = ["send", "--ack", "--endpoint", d.endpoints["ingest"], "--series", "acked", "--timeout", "60",
                "--meta", "pixel_size_nm=0.02", str(stack)]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "sent 5 frames" in out and "all acknowledged as done" in out
        counts = wait_processed(d, 5)
        assert counts["processed"] == 5
        dup = d.registry.get_sample_value("fringelive_frames_duplicate_total")  # > 0 when a resend timer fired
        assert main(argv) == 0  # the same (series, frame)s again: acked done at once, not processed
        assert "all acknowledged as done" in capsys.readouterr().out
        assert d.registry.get_sample_value("fringelive_frames_duplicate_total") >= dup + 5
        counts = d.metrics.counts()
        assert counts["received"] == counts["processed"] == 5


# --- soak -----------------------------------------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow  # minutes: 10,000 frames
def test_soak_10k_small_frames_bursts_malformed_and_a_slow_subscriber(tiny_bundle: Any, tmp_path: Any) -> None:
    """10,000 frames of 32 × 32 px in bursts of 500, one malformed message per 97 frames, a
    subscriber that sleeps 1 ms per message: RSS after warm-up grows < 5 %, the accounting
    closes, the journal holds every published message."""
    side, n, burst = 32, 10_000, 500
    rng = np.random.default_rng(0)
    base = rng.poisson(100.0, (side, side)).astype(np.uint16)
    cfg = journal_config(tiny_bundle, tmp_path / "soak.sqlite", max_bytes=2**30)
    with Daemon(cfg) as d:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.rcvhwm = 100
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        seen, stop = [0], threading.Event()

        def slow() -> None:
            while not stop.is_set():
                if sub.poll(50):
                    sub.recv_multipart()
                    seen[0] += 1
                    time.sleep(0.001)

        reader = threading.Thread(target=slow, daemon=True)
        reader.start()
        push = ctx.socket(zmq.PUSH)
        push.sndtimeo = 60_000
        push.connect(d.endpoints["ingest"])
        malformed, samples = 0, []
        try:
            for i in range(n):
                push.send_multipart(encode_frame(base, series="soak", frame=i, pixel_size_nm=0.02))
                if i % 97 == 0:
                    push.send_multipart([b"\xc1", b""])  # bad_msgpack
                    malformed += 1
                if (i + 1) % burst == 0:
                    time.sleep(0.2)  # a pause between bursts
                    if i + 1 >= 2000:  # after warm-up
                        samples.append(rss_bytes())
            counts = wait_processed(d, n + malformed, timeout=600)
            samples.append(rss_bytes())
        finally:
            stop.set()
            reader.join()
            sub.close(linger=0)
            push.close(linger=0)
        status = d.status()
    growth = (max(samples) - samples[0]) / samples[0]
    print(f"\nsoak: {counts}; slow subscriber saw {seen[0]} of {n + malformed}; journal {status['journal']['entries']} "
          f"entries, last seq {status['last_seq']}; RSS {samples[0] / 2**20:.1f} → {samples[-1] / 2**20:.1f} MiB "
          f"(max growth {growth:.2%})")
    assert counts["received"] == n + malformed
    assert counts["processed"] == n and counts["rejected"] == {"bad_msgpack": malformed} and counts["dropped"] == {}
    assert status["last_seq"] == n + malformed == status["journal"]["entries"]
    assert not status["journal"]["degraded"]
    assert growth < 0.05, samples
