"""The ``folder`` source (daemon/sources/folder.py) on real files written by tifffile,
rosettasciio (EMD) and numpy while it runs: each file once, in acquisition order, never a
half-written file, nothing twice across a restart; then end to end in a daemon (real ONNX
Runtime, results over ZeroMQ) with per-source accounting, and ``serve --follow``."""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.protocol import decode_result
from fringelive.daemon.server import Daemon
from fringelive.daemon.sources.folder import STATE_NAME, FolderSource, FolderSourceConfig, inotify_available

from polling import wait_until  # tests/polling.py

SIDE = 64
SETTLE_S = 0.4


def image(i: int) -> np.ndarray:
    return np.random.default_rng(i).poisson(100.0, (SIDE, SIDE)).astype(np.uint16)


def write_tif(path: Path, pixels: np.ndarray, **meta: Any) -> None:
    import tifffile

    tifffile.imwrite(path, pixels, metadata=meta or None)


def write_emd(path: Path, pixels: np.ndarray) -> None:
    """A rosettasciio-written EMD (NCEM/HDF5) with a nm pixel axis: the `.dm4`-like case."""
    from rsciio.emd import file_writer

    axes = [{"name": n, "scale": 0.02, "units": "nm", "size": SIDE, "offset": 0.0, "navigate": False} for n in "yx"]
    file_writer(str(path), {"data": pixels, "axes": axes, "metadata": {"General": {"title": path.stem}, "Signal": {}},
                            "original_metadata": {}})


def write_any(path: Path, pixels: np.ndarray) -> None:
    if path.suffix == ".tif":
        write_tif(path, pixels)
    elif path.suffix == ".emd":
        write_emd(path, pixels)
    else:
        np.save(path, pixels)


def source(folder: Path, **kw: Any) -> FolderSource:
    kw.setdefault("poll_s", 0.05)
    kw.setdefault("settle_s", SETTLE_S)
    return FolderSource(FolderSourceConfig(path=folder, **kw)).start()


def take(src: FolderSource, n: int, timeout: float = 20.0) -> list[Any]:
    items = []
    t_end = time.monotonic() + timeout
    while len(items) < n:
        assert time.monotonic() < t_end, f"got {len(items)} of {n} frames: {[i.header for i in items]}"
        item = src.get(0.05)
        if item is not None:
            item.done()
            items.append(item)
    return items


def nothing_more(src: FolderSource, wait_s: float = 3 * SETTLE_S) -> None:
    t_end = time.monotonic() + wait_s
    while time.monotonic() < t_end:
        item = src.get(0.05)
        assert item is None, f"unexpected frame {item.header}"


MODES = [True, False] if inotify_available() else [False]


@pytest.mark.parametrize("inotify", MODES, ids=lambda m: "inotify" if m else "polling")
def test_files_written_during_the_run_each_give_one_frame_in_order(tmp_path: Path, inotify: bool) -> None:
    names = [f"{i:02d}_frame{s}" for i, s in enumerate([".tif", ".emd", ".npy", ".tif", ".emd", ".npy"])]
    with source(tmp_path, inotify=inotify, series="insitu") as src:
        assert src.uses_inotify == inotify
        items = []
        for i, name in enumerate(names):  # one by one, each read before the next appears
            write_any(tmp_path / name, image(i))
            items += take(src, 1)
        nothing_more(src)
    assert [it.header["tags"]["file"] for it in items] == names
    assert [(it.header["series"], it.header["frame"]) for it in items] == [("insitu", i) for i in range(6)]
    for i, it in enumerate(items):
        np.testing.assert_array_equal(it.pixels, image(i))
    assert items[1].header["pixel_size_nm"] == pytest.approx(0.02)  # EMD axis scale, as `send` reads it
    state = json.loads((tmp_path / STATE_NAME).read_text())
    assert state["next_frame"] == 6 and set(state["files"]) == set(names)


def test_a_batch_is_ordered_by_acquisition_time_then_name(tmp_path: Path) -> None:
    # names against time: c is oldest; the .npy files carry no time and come after, by name
    write_tif(tmp_path / "a.tif", image(0), timestamp=1000.0 + 30)
    write_tif(tmp_path / "b.tif", image(1), timestamp=1000.0 + 20)
    write_tif(tmp_path / "c.tif", image(2), timestamp=1000.0 + 10)
    np.save(tmp_path / "e.npy", image(4))
    np.save(tmp_path / "d.npy", image(3))
    with source(tmp_path, inotify=False) as src:
        items = take(src, 5)
        nothing_more(src, 0.5)
    assert [it.header["tags"]["file"] for it in items] == ["c.tif", "b.tif", "a.tif", "d.npy", "e.npy"]
    assert [it.header.get("timestamp") for it in items[:3]] == [1010.0, 1020.0, 1030.0]


@pytest.mark.parametrize("inotify", MODES, ids=lambda m: "inotify" if m else "polling")
def test_a_half_written_file_is_not_read_early(tmp_path: Path, inotify: bool) -> None:
    buf = io.BytesIO()
    np.save(buf, image(7))
    data = buf.getvalue()
    with source(tmp_path, inotify=inotify, give_up_s=60.0) as src:
        with open(tmp_path / "slow.npy", "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            nothing_more(src, 0.5 * SETTLE_S)        # still being written: not read
            nothing_more(src, 3 * SETTLE_S)           # writer stalls past settle_s: read fails, nothing sent
            f.write(data[len(data) // 2:])
        (item,) = take(src, 1)
        nothing_more(src)
    np.testing.assert_array_equal(item.pixels, image(7))
    assert item.reject is None


def test_an_unreadable_file_is_rejected_once(tmp_path: Path) -> None:
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all" * 10)
    with source(tmp_path, give_up_s=0.5) as src:
        (item,) = take(src, 1)
        nothing_more(src)
    assert item.reject is not None and item.reject[0] == "unreadable" and "broken.tif" in item.reject[1]


def test_a_growing_multipage_tiff_sends_only_new_pages(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "stack.tif"
    with source(tmp_path, series_per_file=True) as src:
        for i in range(2):
            tifffile.imwrite(path, image(i), append=True)
        items = take(src, 2)
        for i in range(2, 4):
            tifffile.imwrite(path, image(i), append=True)
        items += take(src, 2)
        nothing_more(src)
    assert [(it.header["series"], it.header["frame"]) for it in items] == [("stack", i) for i in range(4)]
    for i, it in enumerate(items):
        np.testing.assert_array_equal(it.pixels, image(i))


def test_a_restart_in_the_middle_processes_none_twice(tmp_path: Path) -> None:
    import tifffile

    for i in range(4):
        np.save(tmp_path / f"f{i}.npy", image(i))
    tifffile.imwrite(tmp_path / "g.tif", image(10), append=True)
    tifffile.imwrite(tmp_path / "g.tif", image(11), append=True)
    with source(tmp_path, order="name") as src:
        first = take(src, 3)            # f0..f2 accepted; f3 may sit read-ahead in the source: not recorded
    for i in range(4, 6):
        np.save(tmp_path / f"f{i}.npy", image(i))
    tifffile.imwrite(tmp_path / "g.tif", image(12), append=True)   # the stack grew meanwhile
    with source(tmp_path, order="name") as src:
        second = take(src, 6)            # f3, f4, f5, g[0..2]
        nothing_more(src)
    seen = [(it.header["tags"]["file"], it.header["tags"]["file_frame"]) for it in first + second]
    assert sorted(seen) == sorted([(f"f{i}.npy", 0) for i in range(6)] + [("g.tif", k) for k in range(3)])
    assert len(set(seen)) == len(seen)
    assert [it.header["frame"] for it in first + second] == list(range(9))   # numbering continues


@pytest.mark.parametrize("after", ["move", "delete"])
def test_after_move_or_delete(tmp_path: Path, after: str) -> None:
    folder, done = tmp_path / "in", tmp_path / "done"
    folder.mkdir()
    done.mkdir()
    with source(folder, after=after, move_to=done if after == "move" else None) as src:
        np.save(folder / "x.npy", image(0))
        take(src, 1)
        wait_until(lambda: not (folder / "x.npy").exists(), 5.0, "the file to go")
    assert (done / "x.npy").exists() == (after == "move")


def test_config_errors_name_the_bad_value(tmp_path: Path) -> None:
    cases = [({"kind": "folder", "path": str(tmp_path / "nope")}, "source[0].path: no such directory"),
             ({"kind": "folder", "path": str(tmp_path), "settle_s": 0}, "source[0].settle_s must be"),
             ({"kind": "folder", "path": str(tmp_path), "after": "shred"}, "source[0].after must be one of"),
             ({"kind": "folder", "path": str(tmp_path), "suffixes": [".xyz"]}, "source[0].suffixes must be"),
             ({"kind": "camera"}, "source[0].kind must be one of"),
             ({"kind": "folder", "path": str(tmp_path), "bogus": 1}, "source[0].bogus")]
    for table, message in cases:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            DaemonConfig.from_dict({"source": [table]})
    with pytest.raises(ConfigError, match="already used"):
        DaemonConfig.from_dict({"source": [{"kind": "folder", "path": str(tmp_path)}] * 2})


def test_serve_follow_adds_folder_sources(tmp_path: Path) -> None:
    from fringelive.cli.serve import follow_folders

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = follow_folders(DaemonConfig(), [str(tmp_path / "a"), str(tmp_path / "b")])
    assert [s.label for s in cfg.source] == ["folder:a", "folder:b"]
    with pytest.raises(ConfigError, match="--follow"):
        follow_folders(DaemonConfig(), [str(tmp_path / "missing")])
    import fringelive.cli as cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.serve.register(sub) if hasattr(cli, "serve") else __import__("fringelive.cli.serve", fromlist=["register"]).register(sub)
    args = parser.parse_args(["serve", "--follow", str(tmp_path / "a"), "--follow", str(tmp_path / "b")])
    assert args.follow == [str(tmp_path / "a"), str(tmp_path / "b")]


# --- in the daemon ------------------------------------------------------------------------------


def daemon_config(bundle: Any, folder: Path) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "model": {"bundle": str(bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
        "source": [{"kind": "folder", "path": str(folder), "name": "cam", "poll_s": 0.05, "settle_s": SETTLE_S,
                    "give_up_s": 0.5, "meta": {"pixel_size_nm": 0.02, "voltage_kv": 300.0}}]})


class Results:
    def __init__(self, d: Daemon) -> None:
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.subscribe(b"")
        self.sub.connect(d.endpoints["results"])
        self.events: list[tuple[bytes, dict]] = []

    def collect(self, n: int, timeout: float = 60.0) -> list[tuple[bytes, dict]]:
        t_end = time.monotonic() + timeout
        while len(self.events) < n:
            assert self.sub.poll(int(max(0.01, t_end - time.monotonic()) * 1000)), f"got {self.events}"
            parts = self.sub.recv_multipart()
            if parts[0] == b"result":
                self.events.append((b"result", decode_result(parts)[0]))
            else:
                import msgpack

                self.events.append((parts[0], msgpack.unpackb(parts[1])))
        return self.events

    def close(self) -> None:
        self.sub.close(linger=0)


@pytest.mark.usefixtures("one_torch_thread")
def test_daemon_follows_a_folder_with_per_source_accounting_and_restart(tiny_bundle: Any, tmp_path: Path) -> None:
    folder = tmp_path / "insitu"
    folder.mkdir()
    names = ["00.tif", "01.emd", "02.npy"]
    with Daemon(daemon_config(tiny_bundle, folder)) as d:
        res = Results(d)
        time.sleep(0.3)  # subscription live before the first file appears (nothing is read before)
        for i, name in enumerate(names):
            write_any(folder / name, image(i))
            wait_until(lambda: d.metrics.sources.counts()["cam"]["received"] == i + 1, 20.0, f"{name} to be read")
        (folder / "03_broken.tif").write_bytes(b"garbage" * 20)
        events = res.collect(4)
        res.close()
        wait_until(lambda: d.metrics.counts()["in_flight"] == 0, 20.0, "idle")
        counts = d.status()["sources"]["cam"]
        sample = d.registry.get_sample_value
        assert sample("fringelive_source_frames_received_total", {"source": "cam"}) == 4
        assert sample("fringelive_source_frames_processed_total", {"source": "cam"}) == 3
        assert sample("fringelive_source_frames_rejected_total", {"source": "cam", "reason": "unreadable"}) == 1
        assert sample("fringelive_source_frames_received_total", {"source": "zmq"}) == 0
    results = [h for topic, h in events if topic == b"result"]
    errors = [h for topic, h in events if topic == b"error"]
    assert [r["meta"]["tags"]["file"] for r in results] == names
    assert [(r["series"], r["frame"]) for r in results] == [("insitu", i) for i in range(3)]
    assert [e["reason"] for e in errors] == ["unreadable"]
    assert counts == {"received": 4, "processed": 3, "dropped": {}, "rejected": {"unreadable": 1}, "in_flight": 0}
    # restart: nothing done before is read again; the new file continues the series
    with Daemon(daemon_config(tiny_bundle, folder)) as d:
        res = Results(d)
        time.sleep(0.3)
        np.save(folder / "04.npy", image(4))
        (topic, header), = res.collect(1)
        res.close()
        time.sleep(3 * SETTLE_S)
        counts = d.status()["sources"]["cam"]
    assert topic == b"result" and header["meta"]["tags"]["file"] == "04.npy" and header["frame"] == 3
    assert counts["received"] == 1 and counts["processed"] == 1


@pytest.mark.slow  # two `serve` processes start (about a minute on a loaded 2-core machine)
def test_serve_follow_end_to_end_with_sigterm(tiny_bundle: Any, tmp_path: Path) -> None:
    """`fringelive serve --follow DIR` (a real process): files written during the run each give one
    result in order; SIGTERM stops it with exit 0; a second run on the same folder sends nothing twice."""
    import os
    import signal
    import subprocess
    import sys

    from fringelive.daemon.control import control_request

    folder = tmp_path / "insitu"
    folder.mkdir()

    def serve() -> tuple[subprocess.Popen, dict[str, str]]:
        cmd = [sys.executable, "-m", "fringelive.cli", "serve", "--bundle", str(tiny_bundle.path), "--backend",
               "onnxruntime", "--ingest", "tcp://127.0.0.1:0", "--results", "tcp://127.0.0.1:0", "--control",
               "tcp://127.0.0.1:0", "--metrics-port", "-1", "--follow", str(folder)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        endpoints: dict[str, str] = {}
        while "control" not in endpoints or "results" not in endpoints:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"serve exited early: {proc.stderr.read()}"  # type: ignore[union-attr]
            fields = line.split()
            if len(fields) == 2 and fields[1].startswith("tcp://"):
                endpoints[fields[0]] = fields[1]
        return proc, endpoints

    def run(names: list[str], first: int) -> tuple[list[dict], str]:
        proc, endpoints = serve()
        watchdog = threading.Timer(180, proc.kill)
        watchdog.start()
        try:
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.subscribe(b"result")
            sub.connect(endpoints["results"])
            time.sleep(0.5)
            got = []
            for i, name in enumerate(names):
                write_any(folder / name, image(first + i))
                while len(got) < i + 1:
                    assert sub.poll(60_000), f"no result for {name}"
                    got.append(decode_result(sub.recv_multipart())[0])
            sources = control_request(endpoints["control"], "status")["sources"]
            sub.close(linger=0)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            return got, out + json.dumps(sources)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    got, out = run(["a.tif", "b.npy"], 0)
    assert [(r["meta"]["tags"]["file"], r["frame"]) for r in got] == [("a.tif", 0), ("b.npy", 1)]
    assert "received 2, processed 2" in out and '"folder:insitu": {"received": 2, "processed": 2' in out
    got, out = run(["c.emd"], 2)
    assert [(r["meta"]["tags"]["file"], r["frame"]) for r in got] == [("c.emd", 2)]
    assert "received 1, processed 1" in out
