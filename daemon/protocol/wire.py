"""Wire constants (version, default endpoints, topics) and the msgpack header encoding shared by
every message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np

__all__ = ["PROTOCOL_VERSION", "DEFAULT_INGEST_ENDPOINT", "DEFAULT_RESULTS_ENDPOINT", "DEFAULT_CONTROL_ENDPOINT",
           "DEFAULT_METRICS_ADDRESS", "RESULT_TOPIC", "ERROR_TOPIC", "DEFAULT_DTYPE", "BYTEORDERS", "packb"]

PROTOCOL_VERSION = 1

DEFAULT_INGEST_ENDPOINT = "tcp://127.0.0.1:5555"    # daemon PULL binds, senders PUSH connect
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5556"   # daemon PUB binds, subscribers SUB connect
DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"   # daemon REP binds, clients REQ connect
DEFAULT_METRICS_ADDRESS = ("127.0.0.1", 9108)       # Prometheus text format at /metrics

RESULT_TOPIC = b"result"
ERROR_TOPIC = b"error"

DEFAULT_DTYPE = "uint16"
BYTEORDERS: tuple[str, ...] = ("little", "big")


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (details must stay one short line)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ cannot come off msgpack, but be safe
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {dict: "map", list: "array", str: "string", bytes: "binary", bool: "bool", int: "int",
            float: "float", type(None): "nil"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _msgpack_default(obj: Any) -> Any:
    """Let headers carry numpy scalars/arrays, tuples-as-arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a msgpack header")


def packb(obj: Any) -> bytes:
    """msgpack-encode a header (numpy scalars/arrays become plain numbers/lists)."""
    return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
