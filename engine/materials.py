"""Lattice-fringe spacings of nanoparticle materials: what the pixel-size estimate looks for.

:data:`D_SPACINGS_NM` lists, per material, the interplanar spacings (nm) of the reflections
that dominate HRTEM lattice fringes, strongest first (for the fcc metals {111} then {200}; for
wurtzite CdSe {100}, {002}, {110}). Values from the room-temperature lattice constants
(Au a = 0.4078 nm, Ag 0.4086, Pt 0.3924, Pd 0.3891, Cu 0.3615; CdSe wurtzite a = 0.4299,
c = 0.7010 nm). ``fringelive.training.fastsim`` draws its fringes from the same values for
Au, Ag, Pt and CdSe.

:func:`reflection_spacings_for` lists *every* allowed reflection down to a d-spacing (default
0.075 nm): an aberration-corrected microscope near Gaussian focus transfers higher orders
({220}, {311}, {222}, {331}, ...) as strongly as, or more strongly than, {111}/{200}, and a peak
from one of them must not be mistaken for a low-order fringe (that would report a pixel size
off by 1.5–2.5×).
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["D_SPACINGS_NM", "LATTICES", "spacings_for", "reflection_spacings_for", "normalise_material"]

#: Interplanar spacings (nm) per material, strongest fringe first.
D_SPACINGS_NM: dict[str, tuple[float, ...]] = {
    "Au": (0.2355, 0.2039),
    "Ag": (0.2359, 0.2043),
    "Pt": (0.2265, 0.1962),
    "Pd": (0.2246, 0.1945),
    "Cu": (0.2087, 0.1808),
    "CdSe": (0.3720, 0.3510, 0.2150),
}

#: Crystal structure and lattice constants (nm): ``("fcc", a)`` or ``("wurtzite", a, c)``.
LATTICES: dict[str, tuple] = {
    "Au": ("fcc", 0.4078),
    "Ag": ("fcc", 0.4086),
    "Pt": ("fcc", 0.3924),
    "Pd": ("fcc", 0.3891),
    "Cu": ("fcc", 0.3615),
    "CdSe": ("wurtzite", 0.4299, 0.7010),
}

_BY_LOWER = {name.lower(): name for name in D_SPACINGS_NM}


def normalise_material(name: str | None) -> str | None:
    """The table's spelling of ``name`` (case-insensitive: ``"au"`` → ``"Au"``), or None when
    the material is not in :data:`D_SPACINGS_NM` (or ``name`` is None)."""
    if not isinstance(name, str):
        return None
    return _BY_LOWER.get(name.strip().lower())


def spacings_for(materials: tuple[str, ...] | list[str]) -> tuple[float, ...]:
    """All known spacings (nm) of ``materials``, strongest first per material, duplicates
    removed; empty when none of them is in the table."""
    out: list[float] = []
    for m in materials:
        key = normalise_material(m)
        if key is None:
            continue
        for d in D_SPACINGS_NM[key]:
            if d not in out:
                out.append(d)
    return tuple(out)


@lru_cache(maxsize=None)
def _fcc_spacings(a: float, d_min: float) -> tuple[float, ...]:
    """d (nm) of the fcc reflections {hkl} (h, k, l all odd or all even) with d >= d_min."""
    out = set()
    n = int(math.ceil(a / d_min)) + 1
    for h in range(n + 1):
        for k in range(h + 1):
            for ll in range(k + 1):
                if h == 0 or len({h % 2, k % 2, ll % 2}) != 1:
                    continue
                d = a / math.sqrt(h * h + k * k + ll * ll)
                if d >= d_min:
                    out.add(round(d, 5))
    return tuple(sorted(out, reverse=True))


@lru_cache(maxsize=None)
def _wurtzite_spacings(a: float, c: float, d_min: float) -> tuple[float, ...]:
    """d (nm) of the wurtzite (P6₃mc) reflections {hkl} with d >= d_min (00l with odd l and
    hh(-2h)l with odd l are extinct)."""
    out = set()
    n_hk, n_l = int(math.ceil(a / d_min)) + 1, int(math.ceil(c / d_min)) + 1
    for h in range(-n_hk, n_hk + 1):
        for k in range(-n_hk, n_hk + 1):
            for ll in range(0, n_l + 1):
                if h == k == ll == 0:
                    continue
                if ll % 2 == 1 and (h - k) % 3 == 0:
                    continue  # includes 00l, l odd
                inv2 = 4.0 / 3.0 * (h * h + h * k + k * k) / (a * a) + ll * ll / (c * c)
                d = 1.0 / math.sqrt(inv2)
                if d >= d_min:
                    out.add(round(d, 5))
    return tuple(sorted(out, reverse=True))


def reflection_spacings_for(materials: tuple[str, ...] | list[str], d_min_nm: float = 0.075) -> tuple[float, ...]:
    """Every allowed reflection's d-spacing (nm, >= ``d_min_nm``) of ``materials``, largest
    first, duplicates removed; empty when none of them is known (:data:`LATTICES`)."""
    if not d_min_nm > 0:
        raise ValueError(f"d_min_nm must be > 0 nm, got {d_min_nm!r}")
    out: set[float] = set()
    for m in materials:
        key = normalise_material(m)
        if key is None or key not in LATTICES:
            continue
        lattice = LATTICES[key]
        if lattice[0] == "fcc":
            out.update(_fcc_spacings(lattice[1], d_min_nm))
        else:
            out.update(_wurtzite_spacings(lattice[1], lattice[2], d_min_nm))
    return tuple(sorted(out, reverse=True))
