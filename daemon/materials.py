"""Lattice-fringe spacings of nanoparticle materials: what the pixel-size estimate looks for.

:data:`D_SPACINGS_NM` lists, per material, the interplanar spacings (nm) of the reflections
that dominate HRTEM lattice fringes, strongest first (for the fcc metals {111} then {200}; for
wurtzite CdSe {100}, {002}, {110}). Values from the room-temperature lattice constants
(Au a = 0.4078 nm, Ag 0.4086, Pt 0.3924, Pd 0.3891, Cu 0.3615; CdSe wurtzite a = 0.4299,
c = 0.7010 nm). ``fringelive.training.fastsim`` draws its fringes from the same values for
Au, Ag, Pt and CdSe.
"""

from __future__ import annotations

__all__ = ["D_SPACINGS_NM", "spacings_for", "normalise_material"]

#: Interplanar spacings (nm) per material, strongest fringe first.
D_SPACINGS_NM: dict[str, tuple[float, ...]] = {
    "Au": (0.2355, 0.2039),
    "Ag": (0.2359, 0.2043),
    "Pt": (0.2265, 0.1962),
    "Pd": (0.2246, 0.1945),
    "Cu": (0.2087, 0.1808),
    "CdSe": (0.3720, 0.3510, 0.2150),
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
