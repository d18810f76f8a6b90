"""Record an OpenVINO precision's parity check in a bundle's card (``fringelive export openvino``).

For each member: OpenVINO FP32 and OpenVINO at ``precision`` on this CPU, both run on the bundle's
verification tiles (``verification_tiles.npy``, else deterministic synthetic tiles; the record
says which), compared by :func:`fringelive.engine.precision.check_parity` (argmax agreement
>= 99.9 %, Dice >= 0.995). The result becomes one ``engines`` record of ``kind = "openvino"`` for
this member, precision, CPU model and OpenVINO version, replacing an older record of the same
key; a failed check is recorded too (``passed: false``), so daemons on this CPU fall back to FP32
without re-running it. At serve time the daemon reads the record (``engine/backends/auto.py``) and
never writes the card.
"""

from __future__ import annotations

import os
from typing import Any

from fringelive.bundle.bundle_io import Bundle, load_bundle
from fringelive.bundle.card import Engine
from fringelive.engine import precision as gate
from fringelive.engine.backends import create_backend
from fringelive.engine.backends.openvino import PRECISIONS, openvino_cpu_info

__all__ = ["record_openvino_precision"]


def record_openvino_precision(bundle_dir: str | os.PathLike[str], precision: str, *,
                              intra_op_threads: int | None = None) -> tuple[Bundle, list[Engine]]:
    """Run the parity check of OpenVINO ``precision`` vs FP32 for every member and write the
    records into the card. Returns the reloaded bundle and the new records. Raises
    :class:`~fringelive.engine.backends.BackendUnavailable` without OpenVINO,
    :class:`~fringelive.engine.backends.openvino.PrecisionUnavailable` when this CPU cannot run
    ``precision`` natively, ``ValueError`` for a bad precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    bundle = load_bundle(bundle_dir)
    info = openvino_cpu_info()
    cpu = info["cpu"]  # OpenVINO's CPU name: what the daemon matches records by
    tiles, source = gate.verification_tiles(bundle.path)
    records: list[Engine] = []
    for i, m in enumerate(bundle.card.members):
        ref = create_backend("openvino", bundle, member=i, intra_op_threads=intra_op_threads, precision="fp32")
        try:
            cand = create_backend("openvino", bundle, member=i, intra_op_threads=intra_op_threads, precision=precision)
            try:
                result = gate.check_parity(ref, cand, tiles, batch_size=1)
            finally:
                cand.close()
        finally:
            ref.close()
        rec: dict[str, Any] = gate.engine_record(kind="openvino", precision=precision, member=m.file, result=result,
                                                 versions={"openvino": info["openvino"]}, cpu=cpu, tiles=source,
                                                 isa=info["capabilities"])
        records.append(Engine(**{**rec, "isa": tuple(rec["isa"])}))
    keys = {(e.kind, e.precision, e.member, e.cpu) for e in records}
    kept = tuple(e for e in bundle.card.engines if (e.kind, e.precision, e.member, e.cpu) not in keys)
    bundle = bundle.write_card(bundle.card.replace(engines=kept + tuple(records)))
    return load_bundle(bundle.path), records
