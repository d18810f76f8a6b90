"""Minimal fringelive subscriber: print results and errors from the daemon's PUB socket.

Needs only numpy, pyzmq and msgpack (no fringelive install):

    python subscribe.py --endpoint tcp://127.0.0.1:5556 --count 10
"""

from __future__ import annotations

import argparse

import msgpack
import numpy as np
import zmq


def decode(parts: list[bytes]) -> tuple[str, dict, np.ndarray | None, np.ndarray | None]:
    """(topic, header, mask (H, W) bool or None, probabilities (H, W) float16 or None)."""
    topic = parts[0].decode()
    header = msgpack.unpackb(parts[1], raw=False)
    if topic != "result":
        return topic, header, None, None
    h, w = header["mask"]["shape"]
    # packbits of the C-ordered mask, bit order "big" (numpy's default)
    mask = np.unpackbits(np.frombuffer(parts[2], np.uint8), count=h * w).reshape(h, w).astype(bool)
    probs = None
    if len(parts) == 4:
        probs = np.frombuffer(parts[3], "<f2").reshape(h, w)
    return topic, header, mask, probs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="results endpoint")
    parser.add_argument("--count", type=int, default=10, help="messages to print, then stop")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="stop after this many seconds without a message")
    args = parser.parse_args(argv)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"result")
    sock.setsockopt(zmq.SUBSCRIBE, b"error")
    sock.setsockopt(zmq.RCVTIMEO, int(args.timeout * 1000))
    sock.connect(args.endpoint)
    seen = 0
    try:
        while seen < args.count:
            topic, header, mask, _ = decode(sock.recv_multipart())
            if topic == "result":
                print(f"{header['series']} #{header['frame']}: "
                      f"{header.get('particle_count')} particles, "
                      f"{mask.mean():.3f} of the frame, drift {header.get('drift', {}).get('status')}")
            else:
                print(f"ERROR {header['reason']} {header['detail']}")
            seen += 1
    except zmq.Again:
        print(f"no message for {args.timeout} s")
    finally:
        sock.close(linger=0)
        ctx.term()
    return 0 if seen == args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
