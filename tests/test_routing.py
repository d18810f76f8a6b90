"""Routing frames among several bundles by their envelopes: the pure rule, the published
checkpoints' envelopes (5 nm Au at four pixel sizes and three doses), and a daemon serving
several bundles (header ``model``, status, reload, metrics).

The daemon tests use copies of the ``tiny_bundle`` fixture whose cards were edited to other
envelopes; the full import of the six published 5 nm Au bundles is ``slow``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.control import control_request
from fringelive.engine.envelope import Conditions
from fringelive.daemon.protocol import decode_result, encode_frame
from fringelive.engine.routing import route
from fringelive.daemon.server import Daemon
from fringelive.bundle.bundle_io import load_bundle
from fringelive.bundle.card import Envelope, Range, Tolerances

SEED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed_models"
TOL = Tolerances()

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def point(px: float, dose: float, material: str = "Au") -> Envelope:
    return Envelope(material=(material,), particle_diameter_nm=Range(5.0, 5.0), pixel_size_nm=Range(px, px),
                    dose_e_per_A2=Range(dose, dose), voltage_kv=Range(300.0, 300.0))


#: The published 5 nm Au datasets (model_details.csv): name → (pixel size nm/px, dose e/Å²).
SEED_AU = {
    "au-5nm-0.020nm-423e": (0.020, 423.0), "au-5nm-0.026nm-450e": (0.026, 450.0),
    "au-5nm-0.033nm-420e": (0.033, 420.0), "au-5nm-0.042nm-425e": (0.042, 425.0),
    "au-5nm-0.020nm-80e": (0.020, 80.0), "au-5nm-0.020nm-884e": (0.020, 884.0),
}


# --- the rule -------------------------------------------------------------------------------------

def test_route_picks_the_fitting_and_nearest_bundle() -> None:
    envs = [(point(0.02, 423), TOL), (point(0.033, 420), TOL), (point(0.02, 80), TOL)]
    r = route(Conditions(0.02, 423.0), envs)
    assert (r.index, r.fits, r.candidates, r.distance) == (0, True, (0,), 0.0)
    assert route(Conditions(0.034, 400.0), envs).index == 1
    r = route(Conditions(0.02, 95.0), envs)
    assert (r.index, r.fits) == (2, True)
    r = route(Conditions(0.06, 423.0), envs)  # nothing fits: the nearest, flagged
    assert (r.index, r.fits, r.candidates) == (1, False, ())
    r = route(Conditions(), envs)  # no metadata: the first
    assert (r.index, r.fits, r.distance, r.candidates) == (0, True, 0.0, (0, 1, 2))
    assert route(Conditions(dose_e_per_A2=85.0), envs).index == 2  # dose alone decides
    assert route(Conditions(0.02, 423.0, material="Pt"), envs).fits is False
    # overlapping envelopes: the one whose range is centred nearer wins
    wide = [(Envelope(pixel_size_nm=Range(0.015, 0.03), dose_e_per_A2=Range(100, 1000)), TOL),
            (Envelope(pixel_size_nm=Range(0.018, 0.022), dose_e_per_A2=Range(300, 500)), TOL)]
    r = route(Conditions(0.02, 420.0), wide)
    assert r.index == 1 and r.candidates == (1, 0)
    with pytest.raises(ValueError, match="at least one bundle"):
        route(Conditions(), [])


@pytest.mark.seed
def test_published_envelopes_route_each_condition_to_its_bundle() -> None:
    if not (SEED_DIR / "model_details.csv").is_file():
        pytest.skip(f"published checkpoints not available: {SEED_DIR} is absent")
    from fringelive.export.seed_import import bundle_name, envelope_for, read_model_details

    details = {bundle_name(d): d for d in read_model_details(SEED_DIR / "model_details.csv").values()}
    names = sorted(n for n in details if n in SEED_AU)
    assert names == sorted(SEED_AU)
    envs = [(envelope_for(details[n]), TOL) for n in names]
    for name, (px, dose) in SEED_AU.items():
        for jitter in (1.0, 1.04, 0.97):  # metadata a few per cent off still routes there
            r = route(Conditions(px * jitter, dose / jitter, 300.0, "Au"), envs)
            assert names[r.index] == name and r.fits, (name, jitter)
    # between the doses: 250 e/Å² at 0.02 nm/px fits none (80·1.3 < 250 < 423·0.7); nearest in log dose
    r = route(Conditions(0.02, 250.0), envs)
    assert not r.fits and names[r.index] == "au-5nm-0.020nm-423e"
    r = route(Conditions(0.06, 423.0), envs)
    assert not r.fits and names[r.index] == "au-5nm-0.042nm-425e"


# --- a daemon serving several bundles --------------------------------------------------------------

def variant(tiny_bundle: Any, root: Path, name: str, px: float, dose: float) -> Path:
    """A copy of the tiny bundle under another name and envelope (members unchanged)."""
    path = root / name
    shutil.copytree(tiny_bundle.path, path)
    b = load_bundle(path)
    b.write_card(b.card.replace(name=name, envelope=point(px, dose)))
    return path


@pytest.fixture(scope="module")
def variants(tiny_bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("routed")
    return {n: variant(tiny_bundle, root, n, px, dose) for n, (px, dose) in
            (("au-0.020-423", (0.02, 423.0)), ("au-0.033-420", (0.033, 420.0)), ("au-0.020-80", (0.02, 80.0)))}


def config(bundles: list[Path], **drift: Any) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "model": {"bundle": str(bundles[0]), "bundles": [str(b) for b in bundles[1:]], "intra_op_threads": 1},
        "drift": drift,
    })


def exchange(d: Daemon, metas: list[dict[str, Any]], side: int = 64) -> list[dict[str, Any]]:
    """Send one frame per metadata map; return the result headers in frame order."""
    ctx = zmq.Context.instance()
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    sub.subscribe(b"")
    sub.connect(d.endpoints["results"])
    push.connect(d.endpoints["ingest"])
    try:
        t_end = time.monotonic() + 10  # slow joiner: send junk until its error event arrives
        while time.monotonic() < t_end:
            push.send_multipart([msgpack.packb({"version": 1, "series": "sync", "frame": 0}), b""])
            if sub.poll(200):
                break
        else:
            raise AssertionError("the results subscription did not come up within 10 s")
        while sub.poll(300):  # drain the remaining junk errors
            sub.recv_multipart()
        rng = np.random.default_rng(0)
        for i, meta in enumerate(metas):
            push.send_multipart(encode_frame(rng.poisson(100.0, (side, side)).astype(np.uint16), series="r", frame=i,
                                             **meta))
        headers = []
        while len(headers) < len(metas):
            assert sub.poll(30_000), f"got {len(headers)} of {len(metas)} results"
            parts = sub.recv_multipart()
            assert parts[0] == b"result", parts[:2]
            headers.append(decode_result(parts)[0])
        return sorted(headers, key=lambda h: h["frame"])
    finally:
        sub.close(linger=0)
        push.close(linger=0)


def test_daemon_routes_frames_by_metadata(variants: dict[str, Path]) -> None:
    paths = list(variants.values())
    with Daemon(config(paths)) as d:
        metas = [{"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0}, {"pixel_size_nm": 0.033, "dose_e_per_A2": 420.0},
                 {"pixel_size_nm": 0.02, "dose_e_per_A2": 80.0}, {"pixel_size_nm": 0.05, "dose_e_per_A2": 420.0},
                 {}]
        headers = exchange(d, metas)
        assert [h["model"] for h in headers] == ["au-0.020-423", "au-0.033-420", "au-0.020-80", "au-0.033-420",
                                                 "au-0.020-423"]
        routes = [h["drift"]["route"] for h in headers]
        assert [r["fits"] for r in routes] == [True, True, True, False, True]
        # the frame that fits none is flagged ood by the envelope of the nearest bundle
        assert "pixel_size_above_envelope" in headers[3]["drift"]["reasons"] and headers[3]["drift"]["status"] == "ood"
        assert headers[4]["drift"]["status"] in ("unknown", "ood", "warn")
        status = control_request(d.endpoints["control"], "status")
        assert [b["name"] for b in status["bundles"]] == list(variants)
        assert status["bundle"]["name"] == "au-0.020-423"
        assert status["bundles"][1]["envelope"]["pixel_size_nm"] == [0.033, 0.033]
        assert status["bundles"][0]["drift"]["calibrated"] is False
        routed = {s.labels["model"]: s.value for fam in d.registry.collect() for s in fam.samples
                  if s.name == "fringelive_routed_frames_total"}
        assert routed == {"au-0.020-423": 2.0, "au-0.033-420": 2.0, "au-0.020-80": 1.0}


def test_reload_with_several_bundles(variants: dict[str, Path], tiny_bundle: Any, tmp_path: Path) -> None:
    paths = list(variants.values())
    replacement = variant(tiny_bundle, tmp_path, "au-0.033-420", 0.033, 300.0)  # same name, new envelope
    stranger = variant(tiny_bundle, tmp_path, "pt-0.02-423", 0.02, 423.0)
    with Daemon(config(paths[:2])) as d:
        ep = d.endpoints["control"]
        reply = control_request(ep, "reload", bundle=str(replacement), timeout_s=60)
        assert reply["ok"] and reply["bundle"] == "au-0.033-420" and reply["previous"] == "au-0.033-420", reply
        assert reply["bundles"] == ["au-0.020-423", "au-0.033-420"]
        assert d.status()["bundles"][1]["envelope"]["dose_e_per_A2"] == [300.0, 300.0]
        reply = control_request(ep, "reload", bundle=str(stranger), timeout_s=60)
        assert reply["ok"] is False and "matches none of the served bundles" in reply["error"]
        reply = control_request(ep, "reload", bundles=[str(p) for p in paths], timeout_s=60)
        assert reply["ok"] and reply["bundles"] == list(variants)
        assert reply["previous_bundles"] == ["au-0.020-423", "au-0.033-420"]
        reply = control_request(ep, "reload", timeout_s=60)  # re-read all three
        assert reply["ok"] and reply["bundles"] == list(variants)
        reply = control_request(ep, "reload", bundles=[str(paths[0]), str(paths[0])], timeout_s=60)
        assert reply["ok"] is False and "appear twice" in reply["error"]
        reply = control_request(ep, "reload", bundles=[str(paths[0]), str(replacement), str(paths[1])], timeout_s=60)
        assert reply["ok"] is False and "appear twice" in reply["error"]
        reply = control_request(ep, "reload", bundles=[], timeout_s=60)
        assert reply["ok"] is False and "non-empty list" in reply["error"]
        assert [m.bundle.name for m in d._models.models] == list(variants)
        headers = exchange(d, [{"pixel_size_nm": 0.02, "dose_e_per_A2": 80.0}])
        assert headers[0]["model"] == "au-0.020-80"


def test_serve_takes_repeated_bundles(variants: dict[str, Path]) -> None:
    import argparse

    from fringelive.cli.serve import build_config

    paths = [str(p) for p in variants.values()]
    args = argparse.Namespace(config=None, bundle=paths, backend=None, ingest=None, results=None, control=None,
                              metrics_port=None, drain_timeout=None)
    cfg = build_config(args)
    assert [str(p) for p in cfg.model.bundle_paths()] == paths


@pytest.mark.slow
@pytest.mark.seed
def test_published_bundles_served_and_routed(seed_models_dir: Path, tmp_path: Path) -> None:
    """Import the six published 5 nm Au datasets (5 folds each), serve them together, and check
    each acquisition condition reaches its bundle."""
    from fringelive.export.seed_import import import_seed

    files = sorted(f for f in seed_models_dir.glob("*.h5") if "5nmAu" in f.name)
    bundles = import_seed(files, tmp_path / "seed", parity_size=64, check_sizes=(64,))
    assert sorted(b.name for b in bundles) == sorted(SEED_AU)
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "model": {"bundle": str(bundles[0].path), "bundles": [str(b.path) for b in bundles[1:]], "members": [0],
                  "intra_op_threads": 1},
    })
    with Daemon(cfg) as d:
        metas = [{"pixel_size_nm": px, "dose_e_per_A2": dose, "voltage_kv": 300.0} for px, dose in SEED_AU.values()]
        headers = exchange(d, metas)
    assert [h["model"] for h in headers] == list(SEED_AU)
    assert all(h["drift"]["route"]["fits"] for h in headers)
