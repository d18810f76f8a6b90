"""Minimal fringelive sender: PUSH synthetic uint16 frames to the daemon's ingest socket.

Needs only numpy, pyzmq and msgpack (no fringelive install):

    python send_frames.py --endpoint tcp://127.0.0.1:5555 --count 10
"""

from __future__ import annotations

import argparse
import time

import msgpack
import numpy as np
import zmq


def make_frame(series: str, index: int, pixels: np.ndarray) -> list[bytes]:
    """One protocol-v1 frame: [msgpack header, raw C-ordered little-endian pixels]."""
    pixels = np.ascontiguousarray(pixels, dtype="<u2")
    header = {
        "version": 1,
        "series": series,
        "frame": index,
        "shape": list(pixels.shape),   # [height, width] px
        "dtype": "uint16",
        "byteorder": "little",
        "pixel_size_nm": 0.02,         # nm per pixel
        "dose_e_per_A2": 400.0,        # e/Å² in this frame
        "voltage_kv": 300.0,
        "timestamp": time.time(),      # Unix seconds
        "camera": "simulated",
        "tags": {"example": True},
    }
    return [msgpack.packb(header, use_bin_type=True), pixels.tobytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="ingest endpoint")
    parser.add_argument("--count", type=int, default=10, help="frames to send")
    parser.add_argument("--size", type=int, default=512, help="frame side (px)")
    parser.add_argument("--series", default="example", help="series name")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the daemon to take a frame")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 4)                     # few big frames in flight
    sock.setsockopt(zmq.IMMEDIATE, 1)                  # block while no daemon is connected
    sock.setsockopt(zmq.SNDTIMEO, int(args.timeout * 1000))
    sock.setsockopt(zmq.LINGER, int(args.timeout * 1000))
    sock.connect(args.endpoint)
    try:
        for i in range(args.count):
            pixels = rng.poisson(100, size=(args.size, args.size)).astype(np.uint16)
            sock.send_multipart(make_frame(args.series, i, pixels))
    except zmq.Again:
        print(f"no daemon took frame {i} within {args.timeout} s at {args.endpoint}")
        sock.close(linger=0)
        ctx.term()
        return 1
    sock.close()
    ctx.term()
    print(f"sent {args.count} frames to {args.endpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
