"""The model bundle: a directory with ``card.json``, one ONNX file per ensemble member and
optional TensorRT engines. See ``docs/bundle.md``.

    bundle/
      card.json
      member0.onnx  member1.onnx ...
      engines/member0.fp16.<gpu>.plan   (optional)

:func:`load_bundle` validates everything a server needs before it accepts a frame: the card
parses under a supported schema version, every file it names exists and matches its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fringelive.bundle.card import Card, CardError, Member, TileConstraints
from fringelive.bundle.netspec import UNetSpec, receptive_field

__all__ = [
    "BundleError",
    "Bundle",
    "load_bundle",
    "write_bundle",
    "sha256_file",
    "sha256_bytes",
    "tile_constraints_for",
]

CARD_FILE = "card.json"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the bundle path and what is wrong."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tile_constraints_for(spec: UNetSpec, min_size_px: int | None = None) -> TileConstraints:
    """Tile constraints of a ``UNetSpec``: multiple of the downsampling factor, receptive-field
    radius, halo = radius rounded up to the factor."""
    factor = spec.downsampling_factor
    radius = receptive_field(spec)[1]
    halo = -(-radius // factor) * factor
    return TileConstraints(
        multiple_of=factor,
        receptive_field_radius_px=radius,
        halo_px=halo,
        min_size_px=min_size_px or factor,
    )


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk."""

    path: Path
    card: Card

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def member_paths(self) -> list[Path]:
        return [self.path / m.file for m in self.card.members]

    def engine_paths(self) -> list[Path]:
        return [self.path / e.file for e in self.card.engines if e.file]

    def check_input_shape(self, height: int, width: int) -> None:
        """Raise :class:`BundleError` when the network cannot take a ``height × width`` input."""
        try:
            self.card.tile.check_input_shape(height, width)
        except CardError as e:
            raise BundleError(f"bundle {self.path}: {e}") from None

    def write_card(self, card: Card) -> "Bundle":
        """Atomically replace ``card.json`` (e.g. after calibration) and return the new bundle."""
        _atomic_write(self.path / CARD_FILE, card.to_json().encode())
        return Bundle(self.path, card)


def load_bundle(path: str | os.PathLike[str], verify_hashes: bool = True) -> Bundle:
    """Load and validate a bundle directory.

    Raises :class:`BundleError` for a missing directory or card, a card that does not parse
    (unknown schema version, bad field), a missing member/engine file, or a sha256 mismatch.
    """
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"bundle {p}: not a directory")
    card_path = p / CARD_FILE
    if not card_path.is_file():
        raise BundleError(f"bundle {p}: missing {CARD_FILE}")
    try:
        card = Card.from_json(card_path.read_text(encoding="utf-8"))
    except (CardError, UnicodeDecodeError) as e:
        raise BundleError(f"bundle {p}: {CARD_FILE}: {e}") from None
    files: list[tuple[str, str, str]] = [("member", m.file, m.sha256) for m in card.members]
    files += [("weights", m.weights, m.weights_sha256 or "") for m in card.members if m.weights]
    files += [("engine", e.file, e.sha256 or "") for e in card.engines if e.file]
    for kind, rel, digest in files:
        f = (p / rel).resolve()
        if p.resolve() not in f.parents:
            raise BundleError(f"bundle {p}: {kind} file {rel!r} lies outside the bundle directory")
        if not f.is_file():
            raise BundleError(f"bundle {p}: {kind} file {rel!r} is missing")
        if verify_hashes:
            actual = sha256_file(f)
            if actual != digest:
                raise BundleError(
                    f"bundle {p}: {kind} file {rel!r} has sha256 {actual}, card says {digest} "
                    "(file corrupted or replaced; re-export the bundle)"
                )
    return Bundle(p, card)


def write_bundle(
    out_dir: str | os.PathLike[str],
    card: Card,
    member_files: Iterable[str | os.PathLike[str]],
    overwrite: bool = False,
    weight_files: Iterable[str | os.PathLike[str] | None] | None = None,
) -> Bundle:
    """Write a bundle: copy each ONNX file in as ``member<i>.onnx`` (and each torch state-dict
    file, when given, as ``member<i>.pt``), fill in file names and sha256 in ``card.members``
    (keeping their ``source``), and write ``card.json`` last so a half-written bundle never
    loads."""
    out = Path(out_dir)
    srcs = [Path(f) for f in member_files]
    if len(srcs) != len(card.members):
        raise BundleError(f"bundle {out}: {len(srcs)} member files for {len(card.members)} card members")
    weights = list(weight_files) if weight_files is not None else [None] * len(srcs)
    if len(weights) != len(srcs):
        raise BundleError(f"bundle {out}: {len(weights)} weight files for {len(srcs)} members")
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise BundleError(f"bundle {out}: directory exists and is not empty (pass overwrite=True / --force)")
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_FILE).unlink(missing_ok=True)
    members = []
    for i, (src, wsrc, m) in enumerate(zip(srcs, weights, card.members)):
        name = f"member{i}.onnx"
        _copy(src, out / name)
        wname = wsha = None
        if wsrc is not None:
            wname = f"member{i}.pt"
            _copy(Path(wsrc), out / wname)
            wsha = sha256_file(out / wname)
        members.append(Member(file=name, sha256=sha256_file(out / name), source=m.source,
                              input_name=m.input_name, output_name=m.output_name,
                              weights=wname, weights_sha256=wsha))
    card = card.replace(members=tuple(members))
    _atomic_write(out / CARD_FILE, card.to_json().encode())
    return load_bundle(out)


def _copy(src: Path, dst: Path) -> None:
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a card is meant to be read by all
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_card_dict(path: str | os.PathLike[str]) -> dict:
    """The raw JSON of a bundle's card (for tools that edit it)."""
    return json.loads((Path(path) / CARD_FILE).read_text(encoding="utf-8"))
