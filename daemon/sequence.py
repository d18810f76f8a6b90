"""Per-daemon sequence numbers on published messages: the publisher stamps ``seq`` (int, from 1,
+1 per result or error in publish order) into each header so a subscriber can see gaps
(``docs/protocol.md``). The header is already packed once; :func:`stamp_seq` appends the key to
the packed msgpack map without unpacking it."""

from __future__ import annotations

import struct
from typing import Any, Sequence

import msgpack

__all__ = ["SEQ_KEY", "stamp_seq", "append_map_key"]

SEQ_KEY = "seq"


def append_map_key(packed: bytes, key: str, value: Any) -> bytes:
    """``packed`` (one msgpack map) with ``key: value`` appended; raises ``ValueError`` when it is
    not a map."""
    b = bytes(packed)
    if not b:
        raise ValueError("empty header: not a msgpack map")
    first = b[0]
    if 0x80 <= first <= 0x8F:
        n, body = first & 0x0F, b[1:]
    elif first == 0xDE:
        n, body = struct.unpack(">H", b[1:3])[0], b[3:]
    elif first == 0xDF:
        n, body = struct.unpack(">I", b[1:5])[0], b[5:]
    else:
        raise ValueError(f"header is not a msgpack map (first byte 0x{first:02x})")
    n += 1
    if n <= 15:
        head = bytes([0x80 | n])
    elif n <= 0xFFFF:
        head = b"\xde" + struct.pack(">H", n)
    else:
        head = b"\xdf" + struct.pack(">I", n)
    return head + body + msgpack.packb(key) + msgpack.packb(value)


def stamp_seq(parts: Sequence[Any], seq: int) -> list[Any]:
    """``[topic, header + {"seq": seq}, *payload]`` of a published message (header: part 1)."""
    out = list(parts)
    out[1] = append_map_key(out[1], SEQ_KEY, int(seq))
    return out
