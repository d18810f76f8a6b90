"""DECTRIS's two compressions in HDF5 framing, pure (no sockets): ``bslz4`` (bitshuffle + LZ4, the
bitshuffle HDF5 filter's chunk format) and ``lz4`` (the HDF5 LZ4 filter's), decoded with
``lz4.block`` and numpy, or with DECTRIS's ``dectris-compression`` when it is installed (the same
bytes, faster). Framing: 8-byte big-endian uncompressed size, 4-byte big-endian block size
(bytes), then per block a 4-byte big-endian compressed size and the LZ4 block (``lz4``: a block
whose compressed size equals its size is stored raw). ``bslz4`` blocks are bitshuffled within
the block; the trailing ``n % 8`` elements follow the last block raw, as the filter writes them.
The ``*_compress`` functions are the inverses, for simulators and tests."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

__all__ = ["StreamDecodeError", "bslz4_decompress", "lz4_hdf5_decompress", "bslz4_compress", "lz4_hdf5_compress"]

_MAX_BYTES = 1 << 30   # refuse a declared uncompressed size above 1 GiB before allocating


class StreamDecodeError(ValueError):
    """A stream message cannot be decoded; the message names the part and the bad value."""


def _lz4() -> Any:
    try:
        import lz4.block
    except ImportError:
        raise StreamDecodeError("LZ4-compressed DECTRIS data needs the 'lz4' package: pip install 'fringelive[acquisition]'") from None
    return lz4.block


def _import_dectris_compression() -> Any:
    """DECTRIS's own C decompressor (``dectris-compression``, optional, ~10× faster for bslz4) or
    None; the numpy path below gives the same bytes (tests/test_source_dectris.py)."""
    try:
        from dectris.compression import decompress
    except ImportError:
        return None
    return decompress


_FAST = _import_dectris_compression()


def _fast(buf: bytes, algorithm: str, elem_size: int) -> bytes | None:
    if _FAST is None:
        return None
    try:
        return bytes(_FAST(bytes(buf), algorithm, elem_size=elem_size))
    except Exception:  # noqa: BLE001 - malformed data: the numpy path names the problem
        return None


def _header(buf: bytes, what: str) -> tuple[int, int]:
    if len(buf) < 12:
        raise StreamDecodeError(f"{what} data has {len(buf)} bytes, shorter than its 12-byte header")
    total, block = struct.unpack(">QI", buf[:12])
    if total > _MAX_BYTES:
        raise StreamDecodeError(f"{what} data declares {total} uncompressed bytes, above the {_MAX_BYTES}-byte limit")
    return total, block


def _blocks(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise StreamDecodeError(f"{what} data is truncated at byte {pos} (block size expected)")
    (n,) = struct.unpack(">I", buf[pos:pos + 4])
    if pos + 4 + n > len(buf):
        raise StreamDecodeError(f"{what} data is truncated: a block of {n} bytes at byte {pos + 4}, {len(buf)} in all")
    return buf[pos + 4:pos + 4 + n], pos + 4 + n


def lz4_hdf5_decompress(buf: bytes, use_fast: bool = True) -> bytes:
    """DECTRIS ``lz4`` (LZ4 in the HDF5 LZ4 filter's framing) → the uncompressed bytes."""
    lz4 = _lz4()
    total, block = _header(buf, "lz4")
    fast = _fast(buf, "lz4", 1) if use_fast else None
    if fast is not None and len(fast) == total:
        return fast
    if block <= 0 and total:
        raise StreamDecodeError(f"lz4 data declares block size {block}")
    out, pos = [], 12
    left = total
    while left > 0:
        size = min(block, left)
        chunk, pos = _blocks(buf, pos, "lz4")
        try:
            out.append(chunk if len(chunk) == size else lz4.decompress(chunk, uncompressed_size=size))
        except Exception as e:  # noqa: BLE001 - lz4 raises LZ4BlockError
            raise StreamDecodeError(f"lz4 block at byte {pos - len(chunk)} does not decompress: {e}") from None
        left -= size
    return b"".join(out)


def _unshuffle(block: bytes, elem_size: int) -> np.ndarray:
    """Bitshuffled block (n elements, n % 8 == 0) → its n × elem_size bytes."""
    n = len(block) // elem_size
    bits = np.unpackbits(np.frombuffer(block, np.uint8).reshape(elem_size, 8, n // 8), axis=-1, bitorder="little")
    return np.packbits(bits.transpose(2, 0, 1), axis=-1, bitorder="little").reshape(-1)


def _shuffle(data: np.ndarray, elem_size: int) -> bytes:
    n = data.size // elem_size
    bits = np.unpackbits(data.reshape(n, elem_size, 1), axis=-1, bitorder="little")   # (n, elem, 8)
    return np.packbits(bits.transpose(1, 2, 0), axis=-1, bitorder="little").tobytes()


def _default_block(elem_size: int) -> int:
    """bitshuffle's default block size in elements (``bshuf_default_block_size``)."""
    return max(8192 // elem_size // 8 * 8, 128)


def bslz4_decompress(buf: bytes, elem_size: int, nbytes: int | None = None, use_fast: bool = True) -> bytes:
    """DECTRIS ``bslz4`` (bitshuffle + LZ4, the bitshuffle HDF5 filter's framing) → bytes.
    With ``nbytes`` (the expected size) a buffer that does not start with that size is taken
    as bare ``bitshuffle.compress_lz4`` output (no 12-byte header, default block size), which
    some Stream V1 senders emit. ``use_fast``: use ``dectris-compression`` when installed."""
    if elem_size not in (1, 2, 4, 8):
        raise StreamDecodeError(f"bslz4 element size must be 1, 2, 4 or 8 bytes, got {elem_size!r}")
    lz4 = _lz4()
    if nbytes is not None and (len(buf) < 8 or struct.unpack(">Q", buf[:8])[0] != nbytes):
        buf = struct.pack(">QI", nbytes, _default_block(elem_size) * elem_size) + bytes(buf)
    total, block_bytes = _header(buf, "bslz4")
    fast = _fast(buf, "bslz4", elem_size) if use_fast else None
    if fast is not None and len(fast) == total:
        return fast
    if total % elem_size:
        raise StreamDecodeError(f"bslz4 size {total} is not a multiple of the element size {elem_size}")
    block = block_bytes // elem_size
    if total and (block <= 0 or block % 8):
        raise StreamDecodeError(f"bslz4 block size {block_bytes} bytes is not a positive multiple of 8 elements")
    n = total // elem_size
    out = np.empty(total, np.uint8)
    pos, done = 12, 0
    full: list[bytes] = []          # full blocks: unshuffled together (one numpy pass)
    while n - done >= 8:
        size = min(block, (n - done) - (n - done) % 8)
        chunk, pos = _blocks(buf, pos, "bslz4")
        try:
            raw = lz4.decompress(chunk, uncompressed_size=size * elem_size)
        except Exception as e:  # noqa: BLE001
            raise StreamDecodeError(f"bslz4 block at byte {pos - len(chunk)} does not decompress: {e}") from None
        if len(raw) != size * elem_size:
            raise StreamDecodeError(f"bslz4 block decompressed to {len(raw)} bytes, expected {size * elem_size}")
        if size == block:
            full.append(raw)
        else:
            out[done * elem_size:(done + size) * elem_size] = _unshuffle(raw, elem_size)
        done += size
    if full:
        k = len(full)
        bits = np.unpackbits(np.frombuffer(b"".join(full), np.uint8).reshape(k, elem_size, 8, block // 8), axis=-1,
                             bitorder="little")                       # (k, elem, 8 bits, block elements)
        out[:k * block * elem_size] = np.packbits(bits.transpose(0, 3, 1, 2), axis=-1, bitorder="little").reshape(-1)
    rest = (n - done) * elem_size
    if len(buf) - pos != rest:
        raise StreamDecodeError(f"bslz4 data has {len(buf) - pos} trailing bytes, expected {rest}")
    out[done * elem_size:] = np.frombuffer(buf[pos:], np.uint8)
    return out.tobytes()


def lz4_hdf5_compress(data: bytes, block: int = 8192) -> bytes:
    """The inverse of :func:`lz4_hdf5_decompress` (for simulators and tests)."""
    lz4 = _lz4()
    parts = [struct.pack(">QI", len(data), block)]
    for i in range(0, len(data), block):
        c = lz4.compress(data[i:i + block], store_size=False)
        parts.append(struct.pack(">I", len(c)) + c)
    return b"".join(parts)


def bslz4_compress(data: bytes, elem_size: int, block_bytes: int = 8192) -> bytes:
    """The inverse of :func:`bslz4_decompress` (for simulators and tests)."""
    lz4 = _lz4()
    arr = np.frombuffer(data, np.uint8)
    n = arr.size // elem_size
    block = block_bytes // elem_size
    parts = [struct.pack(">QI", arr.size, block_bytes)]
    done = 0
    while n - done >= 8:
        size = min(block, (n - done) - (n - done) % 8)
        c = lz4.compress(_shuffle(arr[done * elem_size:(done + size) * elem_size], elem_size), store_size=False)
        parts.append(struct.pack(">I", len(c)) + c)
        done += size
    parts.append(arr[done * elem_size:].tobytes())
    return b"".join(parts)
