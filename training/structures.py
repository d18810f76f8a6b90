"""Atomic models for multislice simulation (ase): crystalline nanoparticles on amorphous carbon.

Lengths here are Å (ase's unit); the caller converts from nm. Every random choice comes from
the ``numpy.random.Generator`` passed in, so a structure is a pure function of its seed.

* :func:`nanoparticle`: a sphere of the given diameter cut from bulk (fcc Au, Ag, Pt; wurtzite
  CdSe), optionally with one coherent twin plane (fcc only: the lattice on one side of a {111}
  atomic plane is mirrored across it), then rotated by a uniformly random 3-D rotation.
* :func:`amorphous_carbon`: a slab of uniformly random carbon positions at 2.0 g/cm³.
* :func:`place_particles`: non-overlapping particle centres inside the field of view.
* :func:`specimen`: particles sitting on the carbon slab in one periodic cell (beam along -z:
  the particles are on top, the electrons pass them first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MATERIALS",
    "CrystalSpec",
    "CARBON_DENSITY_G_CM3",
    "nanoparticle",
    "amorphous_carbon",
    "place_particles",
    "specimen",
    "random_rotation_matrix",
]

CARBON_DENSITY_G_CM3 = 2.0
_AVOGADRO = 6.02214076e23


@dataclass(frozen=True)
class CrystalSpec:
    """Bulk crystal: ase ``crystalstructure`` name, symbols, lattice constants (Å)."""

    symbols: str
    structure: str
    a: float
    c: float | None = None

    @property
    def twinnable(self) -> bool:
        return self.structure == "fcc"


#: Lattice constants at room temperature (Å): Au 4.078, Ag 4.086, Pt 3.924 (fcc);
#: CdSe wurtzite a = 4.299, c = 7.010.
MATERIALS: dict[str, CrystalSpec] = {
    "Au": CrystalSpec("Au", "fcc", 4.078),
    "Ag": CrystalSpec("Ag", "fcc", 4.086),
    "Pt": CrystalSpec("Pt", "fcc", 3.924),
    "CdSe": CrystalSpec("CdSe", "wurtzite", 4.299, 7.010),
}


def random_rotation_matrix(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3-D rotation (3, 3) (normalised quaternion of 4 normals)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _bulk_block(spec: CrystalSpec, radius: float):
    """Bulk crystal covering a ball of ``radius`` Å around its centre of positions."""
    from ase.build import bulk

    if spec.structure == "fcc":
        unit = bulk(spec.symbols, "fcc", a=spec.a, cubic=True)
    else:
        unit = bulk(spec.symbols, spec.structure, a=spec.a, c=spec.c, orthorhombic=True)
    lengths = unit.cell.lengths()
    reps = [int(math.ceil(2 * radius / L)) + 3 for L in lengths]
    block = unit.repeat(reps)
    return block


_FCC_111 = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], float) / math.sqrt(3.0)


def _fault_shift(normal: np.ndarray, a: float, rng: np.random.Generator) -> np.ndarray:
    """An intrinsic stacking-fault displacement a/6<112> lying in the {111} plane ``normal``."""
    signs = np.sign(normal * math.sqrt(3.0))
    options = [np.array(v, float) * signs for v in ((1, 1, -2), (1, -2, 1), (-2, 1, 1))]
    return options[int(rng.integers(3))] * a / 6.0


def nanoparticle(material: str, diameter_A: float, rng: np.random.Generator, *, twin: bool = False,
                 stacking_faults: int = 0):
    """A spherical nanoparticle (ase ``Atoms``, positions centred on the origin, no cell).

    twin: one coherent twin plane through an atomic {111} layer within the middle half of the
    particle (fcc only; ValueError for other structures). stacking_faults: that many intrinsic
    stacking faults (the lattice beyond a random {111} layer — any of the four {111} families —
    displaced by a/6<112>; fcc only), the "random planar defects" of Rangel DaCosta et al.
    Returns ``(atoms, info)`` with ``info`` = {atoms, twin, twin_offset_A, stacking_faults,
    rotation (3×3 as a list)}.
    """
    if material not in MATERIALS:
        raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    if not diameter_A > 0:
        raise ValueError(f"particle diameter must be > 0 Å, got {diameter_A!r}")
    if isinstance(stacking_faults, bool) or not isinstance(stacking_faults, int) or stacking_faults < 0:
        raise ValueError(f"stacking_faults must be a non-negative integer, got {stacking_faults!r}")
    spec = MATERIALS[material]
    if (twin or stacking_faults) and not spec.twinnable:
        raise ValueError(f"planar defects are modelled for fcc materials only, not {material} ({spec.structure})")
    r = 0.5 * diameter_A
    block = _bulk_block(spec, r)
    pos = block.get_positions()
    nums = block.get_atomic_numbers()
    # centre on the atom nearest the block centre so the sphere is centred on a lattice site
    centre = pos[np.argmin(np.linalg.norm(pos - pos.mean(0), axis=1))]
    pos = pos - centre
    info: dict = {"twin": bool(twin), "twin_offset_A": None, "stacking_faults": int(stacking_faults)}
    layer = spec.a / math.sqrt(3.0)  # {111} layer spacing
    k_max = max(int((0.5 * r) // layer), 0)
    for _ in range(stacking_faults):
        n = _FCC_111[int(rng.integers(4))]
        offset = layer * int(rng.integers(-k_max, k_max + 1))
        beyond = (pos @ n - offset) > 0.5 * layer
        pos = pos + beyond[:, None] * _fault_shift(n, spec.a, rng)[None, :]
    if twin:
        n = np.ones(3) / math.sqrt(3.0)  # [111] in the cubic frame
        heights = pos @ n
        # the (111) layers are at multiples of a/sqrt(3); pick one within the middle half
        offset = layer * int(rng.integers(-k_max, k_max + 1))
        side = heights - offset
        mirrored = pos - 2.0 * side[:, None] * n[None, :]
        keep_a = side <= 1e-6
        keep_b = (mirrored @ n - offset) > 0.1
        pos = np.concatenate([pos[keep_a], mirrored[keep_b]])
        nums = np.concatenate([nums[keep_a], nums[keep_b]])
        info["twin_offset_A"] = float(offset)
    inside = np.linalg.norm(pos, axis=1) <= r
    pos, nums = pos[inside], nums[inside]
    rot = random_rotation_matrix(rng)
    pos = pos @ rot.T
    from ase import Atoms

    atoms = Atoms(numbers=nums, positions=pos)
    info["atoms"] = int(len(atoms))
    info["rotation"] = [[round(float(v), 6) for v in row] for row in rot]
    return atoms, info


def amorphous_carbon(extent_A: float, thickness_A: float, rng: np.random.Generator,
                     density_g_cm3: float = CARBON_DENSITY_G_CM3):
    """Uniformly random carbon positions filling ``extent × extent × thickness`` Å (z from 0)."""
    from ase import Atoms

    if thickness_A <= 0:
        return Atoms()
    per_A3 = density_g_cm3 / 12.011 * _AVOGADRO * 1e-24
    n = int(round(per_A3 * extent_A * extent_A * thickness_A))
    pos = rng.uniform(0.0, 1.0, (n, 3)) * np.array([extent_A, extent_A, thickness_A])
    return Atoms(f"C{n}" if n else "", positions=pos)


def place_particles(rng: np.random.Generator, extent_A: float, radii_A: list[float], margin_A: float = 2.0,
                    attempts: int = 200, *, edge_overlap: bool = False) -> list[tuple[float, float]]:
    """Non-overlapping (x, y) centres (Å); a particle that does not fit after ``attempts``
    tries is dropped (so fewer may return). Without ``edge_overlap`` every particle lies wholly
    inside the field of view (a particle larger than the field is centred); with it a centre
    may lie anywhere in the field, so particles can be cut by the frame edge (the simulation
    cell is periodic: the part outside re-enters at the opposite edge, in image and mask alike)."""
    out: list[tuple[float, float]] = []
    kept: list[float] = []
    for r in radii_A:
        lo, hi = (0.0, extent_A) if edge_overlap else (r + margin_A, extent_A - r - margin_A)
        if hi <= lo:
            if not out:
                out.append((0.5 * extent_A, 0.5 * extent_A))
                kept.append(r)
            continue
        for _ in range(attempts):
            x, y = rng.uniform(lo, hi, 2)
            if all(_periodic_gap(x - px, y - py, extent_A, edge_overlap) > r + pr + margin_A
                   for (px, py), pr in zip(out, kept)):
                out.append((float(x), float(y)))
                kept.append(r)
                break
    return out


def _periodic_gap(dx: float, dy: float, extent_A: float, periodic: bool) -> float:
    if periodic:
        dx = dx - extent_A * round(dx / extent_A)
        dy = dy - extent_A * round(dy / extent_A)
    return math.hypot(dx, dy)


def specimen(particles: list, centres: list[tuple[float, float]], extent_A: float, carbon_thickness_A: float,
             rng: np.random.Generator, *, vacuum_A: float = 2.0):
    """Particles on top of a carbon slab in one periodic cell ``extent × extent × depth`` Å.

    Returns ``(all_atoms, particles_only)``, both with the same cell, so a particle-only exit
    wave can be simulated on exactly the same grid.
    """
    from ase import Atoms

    top = 0.0
    placed = Atoms()
    for atoms, (x, y) in zip(particles, centres):
        a = atoms.copy()
        if not len(a):
            continue
        pos = a.get_positions()
        pos = pos - np.array([0.0, 0.0, pos[:, 2].min()]) + np.array([x, y, 0.0])
        pos[:, :2] %= extent_A  # periodic cell: a particle cut by the frame edge re-enters opposite
        a.set_positions(pos)
        placed += a
        top = max(top, float(a.get_positions()[:, 2].max()))
    height = top + vacuum_A
    # beam travels along +z in abTEM: particles first (z from vacuum), carbon below them
    if len(placed):
        placed.positions[:, 2] += vacuum_A
    carbon = amorphous_carbon(extent_A, carbon_thickness_A, rng)
    if len(carbon):
        carbon.positions[:, 2] += vacuum_A + height
    depth = vacuum_A + height + max(carbon_thickness_A, 0.0) + vacuum_A
    cell = [extent_A, extent_A, depth]
    both = placed + carbon
    both.set_cell(cell)
    both.set_pbc(True)
    only = placed.copy()
    only.set_cell(cell)
    only.set_pbc(True)
    return both, only
