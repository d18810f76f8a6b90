"""Particle tracking (engine/tracking.py) and time-series rows (engine/timeseries.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from fringelive.engine import timeseries
from fringelive.engine.tracking import FrameObservation, ParticleTracker, TrackingSettings, label_kept
from series_sim import make_series, registered, stats_of  # tests/series_sim.py

PX = 0.02  # nm/px


def _frame(discs, shape=(400, 400), drift=(0.0, 0.0)):
    """Label image (H, W) of truth ids for discs (id, y, x, r) in specimen px, drawn at
    position + drift; returns (truth, labels, particles)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    truth = np.zeros(shape, np.int32)
    for tid, y, x, r in discs:
        truth[(yy - y - drift[0]) ** 2 + (xx - x - drift[1]) ** 2 <= r * r] = tid
    labels = label_kept(truth > 0, min_area_px=5)
    return truth, labels, stats_of(labels)


def _obs(k, labels, parts, drift=(0.0, 0.0), series="s", mag=1e5):
    return FrameObservation(series, k, parts, labels, PX, drift, mag)


def _track_of(res, parts, labels, truth, tid):
    """Track id given to the particle that carries truth id ``tid``."""
    for p, t in zip(parts, res.track_ids):
        if np.any(truth[labels == p["label"]] == tid):
            return t
    return None


def _truth_counts(labels, truth, n):
    """(n + 1, T + 1) pixel counts of truth id t under detection label l."""
    t = int(truth.max()) + 1
    key = labels.astype(np.int64) * t + truth
    return np.bincount(key.ravel(), minlength=(n + 1) * t).reshape(n + 1, t)


def _identity_fraction(pairs):
    """Share of (truth, track) particle-frame pairs kept under the best one-to-one mapping of
    truth ids to track ids (each truth id owns at most one track id and vice versa)."""
    truths = sorted({a for a, _ in pairs})
    tracks = sorted({b for _, b in pairs})
    counts = np.zeros((len(truths), len(tracks)))
    for a, b in pairs:
        counts[truths.index(a), tracks.index(b)] += 1
    r, c = linear_sum_assignment(-counts)
    return float(counts[r, c].sum() / len(pairs))


# --- the acceptance scenario -------------------------------------------------------------------

@pytest.mark.slow  # the 12-frame 2048² acceptance series: ~20 s CPU to simulate
def test_synthetic_series_identity_merge_and_drift():
    """2048² frames at 423 e/Å², stage drift up to ±30 px per frame per axis, Brownian motion,
    growth, one nucleation and one coalescence. Drift from registration of the noisy frames,
    masks = the true masks (segmentation is not under test here)."""
    s = make_series()
    regs = registered()
    tracker = ParticleTracker(TrackingSettings(max_gap_frames=2, max_displacement_nm=2.0))
    pairs, events, track_of_truth = [], [], {}
    for k, (frame, truth) in enumerate(zip(s.frames, s.truth)):
        reg = regs[k]
        labels = label_kept(truth > 0, min_area_px=20)
        parts = stats_of(labels)
        res = tracker.update(FrameObservation("run", k, parts, labels, PX, reg.cumulative_px, 8e5))
        events.extend(res.events)
        counts = _truth_counts(labels, truth, len(parts))  # truth id = majority truth label under it
        for p, tid in zip(parts, res.track_ids):
            t = int(np.argmax(counts[p["label"], 1:])) + 1
            pairs.append((t, tid))
            track_of_truth.setdefault(t, set()).add(tid)
    identity = _identity_fraction(pairs)
    print(f"tracking: identity kept for {identity:.1%} of {len(pairs)} particle-frame pairs")
    assert identity >= 0.95

    merged = [e for e in events if e["type"] == "merged"]
    assert len(merged) == len(s.merges) == 1
    (m_frame, (a, b), child_truth), e = s.merges[0], merged[0]
    assert m_frame <= e["frame"] <= m_frame + 1  # reported within one frame
    assert sorted(e["parents"]) == sorted([*track_of_truth[a], *track_of_truth[b]])
    assert track_of_truth[child_truth] == {e["child"]}  # the child has its own new id ...
    assert e["child"] not in track_of_truth[a] | track_of_truth[b]  # ... never a parent's
    appeared = [e for e in events if e["type"] == "appeared" and e["frame"] > 0]
    assert [(e["frame"], e["track_id"]) for e in appeared] == [(f, min(track_of_truth[t])) for f, t in s.births]
    assert not [e for e in events if e["type"] in ("split", "disappeared")]
    assert all(len(v) == 1 for v in track_of_truth.values())  # no identity switches at all


@pytest.mark.slow  # the 12-frame 2048² acceptance series: ~20 s CPU to simulate
def test_synthetic_series_with_imperfect_masks():
    """The same series with segmentation-like errors: each frame's mask eroded or dilated by
    1–2 px, one particle missed in two single frames (gap closing), a spurious 1-frame blob."""
    from scipy import ndimage

    s = make_series()
    regs = registered()
    rng = np.random.default_rng(7)
    tracker = ParticleTracker(TrackingSettings(max_gap_frames=2, max_displacement_nm=2.0))
    pairs, events = [], []
    for k, truth in enumerate(s.truth):
        mask = truth > 0
        grow = int(rng.integers(-2, 3))
        if grow > 0:
            mask = ndimage.binary_dilation(mask, iterations=grow)
        elif grow < 0:
            mask = ndimage.binary_erosion(mask, iterations=-grow)
        if k in (3, 6):  # a missed detection
            ids = [t for t in np.unique(truth) if t > 2]
            mask &= truth != ids[k % len(ids)]
        if k == 5:  # a false positive for one frame
            mask[20:40, 1000:1020] = True
        labels = label_kept(mask, min_area_px=20)
        parts = stats_of(labels)
        res = tracker.update(FrameObservation("run", k, parts, labels, PX, regs[k].cumulative_px, 8e5))
        events.extend(res.events)
        counts = _truth_counts(labels, truth, len(parts))
        for p, tid in zip(parts, res.track_ids):
            if counts[p["label"], 1:].any():
                pairs.append((int(np.argmax(counts[p["label"], 1:])) + 1, tid))
    identity = _identity_fraction(pairs)
    print(f"tracking (imperfect masks): identity kept for {identity:.1%} of {len(pairs)} pairs")
    assert identity >= 0.95
    merged = [e for e in events if e["type"] == "merged"]
    assert len(merged) == 1 and s.merges[0][0] <= merged[0]["frame"] <= s.merges[0][0] + 1
    assert not [e for e in events if e["type"] == "split"]


# --- events on small scenes ----------------------------------------------------------------

def test_split_gives_new_ids_naming_the_parent():
    tr = ParticleTracker()
    t0, l0, p0 = _frame([(1, 200, 200, 40)])
    r0 = tr.update(_obs(0, l0, p0))
    parent = r0.track_ids[0]
    t1, l1, p1 = _frame([(2, 200, 178, 20), (3, 200, 222, 20)])
    r1 = tr.update(_obs(1, l1, p1))
    (e,) = [e for e in r1.events if e["type"] == "split"]
    assert e["parent"] == parent and sorted(e["children"]) == sorted(r1.track_ids)
    assert parent not in r1.track_ids
    assert not [e for e in r1.events if e["type"] in ("appeared", "disappeared")]


def test_three_way_merge_and_parents_never_continue():
    tr = ParticleTracker()
    discs = [(1, 100, 100, 25), (2, 100, 160, 25), (3, 160, 130, 25)]
    _, l0, p0 = _frame(discs, (300, 300))
    ids0 = tr.update(_obs(0, l0, p0)).track_ids
    _, l1, p1 = _frame([(4, 120, 130, 55)], (300, 300))
    r1 = tr.update(_obs(1, l1, p1))
    (e,) = r1.events
    assert e == {"type": "merged", "parents": sorted(ids0), "child": r1.track_ids[0], "frame": 1}
    assert r1.track_ids[0] not in ids0
    r2 = tr.update(_obs(2, l1, p1))
    assert r2.track_ids == r1.track_ids and r2.events == []


def test_touching_neighbours_that_do_not_merge_keep_their_ids():
    tr = ParticleTracker()
    ids = None
    for k in range(6):
        gap = 12 - 2 * k  # approach to 2 px, never touch (8-connectivity needs a 1 px gap)
        _, l, p = _frame([(1, 150, 150 - 30 - gap / 2, 30), (2, 150, 150 + 30 + gap / 2, 30)], (300, 300))
        r = tr.update(_obs(k, l, p))
        ids = ids or r.track_ids
        assert r.track_ids == ids
        assert not [e for e in r.events if e["type"] in ("merged", "split")]


def test_gap_closing_within_window_and_disappearance_after():
    tr = ParticleTracker(TrackingSettings(max_gap_frames=2, max_displacement_nm=1.0))
    both = [(1, 100, 100, 20), (2, 250, 250, 20)]
    only = [(1, 100, 100, 20)]
    ids = tr.update(_obs(0, *_frame(both)[1:])).track_ids
    for k in (1, 2):  # particle 2 missed for 2 frames (e.g. out of focus)
        r = tr.update(_obs(k, *_frame(only)[1:]))
        assert r.track_ids == [ids[0]] and r.events == []
    r = tr.update(_obs(3, *_frame(both)[1:]))
    assert r.track_ids == ids and r.events == []  # gap closed: same id, no event
    for k in (4, 5, 6):
        r = tr.update(_obs(k, *_frame(only)[1:]))
    assert r.events == [{"type": "disappeared", "track_id": ids[1], "frame": 6, "last_frame": 3}]
    r = tr.update(_obs(7, *_frame(both)[1:]))
    new = r.track_ids[1]
    assert new not in ids and r.events == [{"type": "appeared", "track_id": new, "frame": 7}]


def _ids_by_truth(use_drift: bool) -> dict[int, set[int]]:
    # 5×5 grid, 40 px pitch, r = 8 px; the stage moves 30 px per frame in x (more than half
    # the pitch: without the drift every particle is closest to its neighbour's old place).
    discs = [(5 * i + j + 1, 80 + 40 * i, 60 + 40 * j, 8) for i in range(5) for j in range(5)]
    tr = ParticleTracker(TrackingSettings(max_displacement_nm=0.4))  # 20 px
    seen: dict[int, set[int]] = {}
    for k in range(5):
        drift = (5.0 * k, 30.0 * k)
        truth, labels, parts = _frame(discs, (400, 400), drift=drift)
        r = tr.update(_obs(k, labels, parts, drift=drift if use_drift else (0.0, 0.0)))
        for p, tid in zip(parts, r.track_ids):
            y, x = (int(round(v)) for v in p["centroid_px"])
            seen.setdefault(int(truth[y, x]), set()).add(tid)
    return seen


def test_large_drift_is_taken_out_before_matching():
    with_drift = _ids_by_truth(True)
    assert len(with_drift) == 25 and all(len(v) == 1 for v in with_drift.values())
    without = _ids_by_truth(False)
    assert any(len(v) > 1 for v in without.values())  # the control: ignoring drift breaks identities


def test_distance_only_without_label_images():
    tr = ParticleTracker(TrackingSettings(max_displacement_nm=1.0))
    p0 = [{"label": 1, "area_px": 100, "centroid_px": [10.0, 10.0]},
          {"label": 2, "area_px": 100, "centroid_px": [10.0, 200.0]}]
    p1 = [{"label": 1, "area_px": 100, "centroid_px": [12.0, 199.0]},
          {"label": 2, "area_px": 100, "centroid_px": [11.0, 12.0]}]
    ids = tr.update(FrameObservation("s", 0, p0, None, PX)).track_ids
    assert tr.update(FrameObservation("s", 1, p1, None, PX)).track_ids == ids[::-1]


def test_resets_new_series_restarts_ids_magnification_continues():
    tr = ParticleTracker()
    _, l, p = _frame([(1, 100, 100, 20)])
    assert tr.update(_obs(0, l, p, series="a")).track_ids == [1]
    assert tr.update(_obs(1, l, p, series="a")).track_ids == [1]
    r = tr.update(_obs(2, l, p, series="a", mag=2e5))
    assert r.reset == "magnification_change" and r.track_ids == [2]
    assert r.events[0] == {"type": "reset", "reason": "magnification_change", "frame": 2}
    r = tr.update(_obs(0, l, p, series="b", mag=2e5))
    assert r.reset == "new_series" and r.track_ids == [1]


def test_disabled_and_settings_checks():
    _, l, p = _frame([(1, 100, 100, 20)])
    r = ParticleTracker(TrackingSettings(enabled=False)).update(_obs(0, l, p))
    assert r.track_ids == [0] and r.events == []
    for kwargs, word in (({"max_gap_frames": -1}, "max_gap_frames"), ({"max_displacement_nm": 0}, "max_displacement_nm"),
                         ({"max_displacement_nm": float("inf")}, "max_displacement_nm"),
                         ({"merge_overlap": 1.5}, "merge_overlap"), ({"enabled": 1}, "enabled")):
        with pytest.raises(ValueError, match=word):
            TrackingSettings(**kwargs)


def test_label_kept_matches_particle_stats_numbering():
    mask = np.zeros((50, 50), bool)
    mask[2:4, 2:4] = True  # 4 px: dropped
    mask[10:20, 5:15] = True
    mask[30:45, 30:40] = True
    lab = label_kept(mask, min_area_px=20)
    assert sorted(np.unique(lab)) == [0, 1, 2] and lab[3, 3] == 0 and lab[15, 10] == 1 and lab[40, 35] == 2


# --- time-series rows ------------------------------------------------------------------------

def test_rows_drift_corrected_units_circularity_and_stimulus():
    truth, labels, parts = _frame([(1, 100, 120, 30)], drift=(5.0, -7.0))
    meta = {"series": "s", "frame": 3, "pixel_size_nm": PX, "timestamp": 1000.5, "temperature_C": 450.0,
            "pressure_Pa": 120, "stimulus.gas": "H2", "tags": {"stimulus.flow_sccm": 2.0, "other": 1}}
    (row,) = timeseries.particle_rows(meta, parts, [7], (5.0, -7.0), labels, t0=1000.0)
    assert row["track_id"] == 7 and row["time_s"] == pytest.approx(0.5)
    assert (row["centroid_y_nm"], row["centroid_x_nm"]) == (pytest.approx(100 * PX), pytest.approx(120 * PX))
    assert row["diameter_nm"] == pytest.approx(60 * PX, rel=0.02)
    assert 0.9 <= row["circularity"] <= 1.0
    assert row["temperature_C"] == 450.0 and row["pressure_Pa"] == 120.0
    assert row["stimulus.gas"] == "H2" and row["stimulus.flow_sccm"] == 2.0 and "other" not in row
    ev = timeseries.event_rows(meta, [{"type": "merged", "parents": [3, 7], "child": 12, "frame": 3}])
    assert ev[0]["track_id"] == 12 and ev[0]["parents"] == "3;7" and ev[0]["children"] == "12"
    cols = timeseries.columns([row], timeseries.PARTICLE_COLUMNS)
    assert cols["track_id"].dtype == np.int64 and cols["stimulus.gas"].dtype == object
    text = timeseries.csv_text([row], timeseries.PARTICLE_COLUMNS)
    header = text.splitlines()[0].split(",")
    assert header[:4] == ["series", "frame", "time_s", "track_id"] and "temperature_C" in header
    assert all(c in timeseries.UNITS for c in timeseries.PARTICLE_COLUMNS if c != "series")


def test_necked_pair_has_low_circularity():
    truth, labels, parts = _frame([(1, 100, 80, 30), (1, 100, 135, 30)])
    (row,) = timeseries.particle_rows({"series": "s", "frame": 0, "pixel_size_nm": PX}, parts, [1], (0, 0), labels)
    assert row["circularity"] < 0.8 and math.isnan(row["time_s"])
