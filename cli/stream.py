"""``fringelive send`` (replay image files into the daemon) and ``fringelive watch`` (print and
record what it publishes). Wire format: ``docs/protocol.md``; sockets are plain pyzmq."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fringelive.cli import CLIError, summary
from fringelive.cli.argtypes import nonnegative_int, positive_float, positive_int
from fringelive.daemon.protocol import (DEFAULT_INGEST_ENDPOINT, DEFAULT_RESULTS_ENDPOINT, ERROR_TOPIC,
                                        ProtocolError, RESULT_TOPIC, configure_curve_client, decode_error,
                                        decode_result, encode_frame)
from fringelive.daemon.protocol.header_keys import unknown_key_warnings
from fringelive.engine.readers import RSCIIO_SUFFIXES, ReaderError, check_readable, read_frames
from fringelive.stream.catchup import GapFiller
from fringelive.stream.recorder import ResultRecorder
from fringelive.stream.send import (DEFAULT_SEND_HWM, DEFAULT_SEND_TIMEOUT_S, DEFAULT_SNDBUF_BYTES, SendError,
                                    merge_meta, parse_meta, wait_for_peers)
from fringelive.stream.watch import announce_ready, format_error_line, format_result_line, subscription_ready


# --------------------------------------------------------------------------------------------
# argument helpers (pure)
# --------------------------------------------------------------------------------------------


def _add_curve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--curve-server-key", metavar="FILE", type=Path,
                        help="CURVE: the daemon's public certificate file (server.key, made by "
                             "zmq.auth.create_certificates); no unit")
    parser.add_argument("--curve-client-key", metavar="FILE", type=Path,
                        help="CURVE: this client's secret certificate file (client.key_secret); "
                             "no unit")


def _apply_curve(sock: Any, args: argparse.Namespace) -> bool:
    server, client = args.curve_server_key, args.curve_client_key
    if server is None and client is None:
        return False
    if server is None or client is None:
        raise CLIError("CURVE needs both --curve-server-key and --curve-client-key", 2)
    try:
        configure_curve_client(sock, server, client)
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    return True


# --------------------------------------------------------------------------------------------
# send
# --------------------------------------------------------------------------------------------

def _planned_frames(args: argparse.Namespace) -> Iterator[tuple[Path, str, int, Any]]:
    """Yield (file, series, frame index, ImageFrame) in send order."""

    counters: dict[str, int] = {}
    for _ in range(args.repeat):
        for path in args.files:
            series = args.series or path.stem
            for image in read_frames(path, stack=args.stack, grey=args.grey):
                index = counters.get(series, args.start_frame)
                counters[series] = index + 1
                yield path, series, index, image


def _send_acked(args: argparse.Namespace, extra_meta: dict[str, Any]) -> int:
    """``send --ack``: a DEALER to a daemon with ``[ingest] mode = "ack"``; every frame is kept
    until the daemon acknowledges it as done, and sent again after a reconnect (stream/ack_send.py)."""
    from fringelive.stream.ack_send import AckSender

    if args.bind:
        raise CLIError("--ack cannot be combined with --bind (the daemon's ROUTER binds, the sender connects)", 2)
    sender = AckSender(args.endpoint, window=args.hwm, configure=lambda s: _apply_curve(s, args))
    start = time.monotonic()
    try:
        for _path, series, index, image in _planned_frames(args):
            try:
                parts = encode_frame(image.pixels, series=series, frame=index, **merge_meta(image.meta, extra_meta))
            except ValueError as e:
                raise CLIError(f"{image.source}: {e}", 2) from None
            if args.rate is not None:
                delay = start + sender.sent / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sender.send((series, index), parts, args.timeout)
            if args.verbose:
                print(f"sent {series} #{index} from {image.source}", flush=True)
        sender.finish(args.timeout)
    except SendError as e:
        raise CLIError(f"{e}; {sender.done} of {sender.sent} frames acknowledged as done", 1) from None
    except ReaderError as e:
        raise CLIError(f"{e}; {sender.sent} frames sent", 1) from None
    finally:
        sender.close()
    print(f"sent {sender.sent} frames to {args.endpoint}, all acknowledged as done in {time.monotonic() - start:.2f} s "
          f"({sender.resent} resent, {sender.duplicates} duplicate(s) reported, {sender.reconnects} reconnect(s))")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import zmq


    # `--meta a=1 b=2 FILE` is greedy in argparse: items without "=" are files.
    meta_items = [m for m in args.meta or [] if "=" in m]
    args.files = list(args.files) + [Path(m) for m in args.meta or [] if "=" not in m]
    if not args.files:
        raise CLIError("send needs at least one FILE", 2)
    try:
        for path in args.files:
            check_readable(path)
            if path.suffix.lower() not in RSCIIO_SUFFIXES:  # layout checks before connecting (cheap: mmap, 1 page)
                next(iter(read_frames(path, stack=args.stack, grey=args.grey)), None)
        extra_meta = parse_meta(meta_items)
        for warning in unknown_key_warnings(extra_meta):  # typos: kept, but said at once
            print(f"send: warning: {warning}", file=sys.stderr, flush=True)
        reserved = sorted(set(extra_meta) & {"version", "series", "frame", "shape", "dtype",
                                              "byteorder"})
        if reserved:
            raise ValueError(f"--meta cannot set {reserved[0]!r}: series and frame come from "
                             "--series/--start-frame, shape/dtype/byteorder from the file")
    except (ReaderError, ValueError) as e:
        raise CLIError(str(e), 2) from None
    try:  # validate --series/--meta once, before connecting
        import numpy as np

        encode_frame(np.zeros((1, 1), np.uint16), series=args.series or args.files[0].stem,
                     frame=args.start_frame, **extra_meta)
    except ValueError as e:
        raise CLIError(str(e), 2) from None

    if args.ack:
        return _send_acked(args, extra_meta)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    timeout_ms = int(args.timeout * 1000)
    sock.setsockopt(zmq.SNDHWM, args.hwm)
    sock.setsockopt(zmq.SNDBUF, DEFAULT_SNDBUF_BYTES)  # bounds what a daemon restart can lose (protocol.md)
    sock.setsockopt(zmq.IMMEDIATE, 1)        # queue only on a live connection: block, not pile up
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    sock.setsockopt(zmq.LINGER, timeout_ms)  # on close, wait this long for queued frames
    sent = 0
    sent_bytes = 0
    per_file: dict[tuple[Path, str], list[int]] = {}
    try:
        curve = _apply_curve(sock, args)
        if args.bind:
            if curve:
                raise CLIError("--bind cannot be combined with CURVE: a daemon whose ingest connects "
                               "(ingest.bind = false) runs without CURVE", 2)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)      # ms: notice a worker host that vanished without
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)  # closing its connection, stop dealing frames to it
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            try:
                try:
                    sock.bind(args.endpoint)
                except zmq.ZMQError as e:
                    raise CLIError(f"cannot bind {args.endpoint!r}: {e}", 2) from None
                args.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
                print(f"send: bound {args.endpoint}" + (f", waiting for {args.wait_workers} worker(s)"
                                                        if args.wait_workers else ""), flush=True)
                if args.wait_workers:
                    try:
                        wait_for_peers(monitor, args.wait_workers, args.timeout)
                    except SendError as e:
                        raise CLIError(str(e), 1) from None
            finally:
                sock.disable_monitor()
                monitor.close(linger=0)
        else:
            if args.wait_workers:
                raise CLIError("--wait-workers needs --bind (daemons connect to the sender)", 2)
            try:
                sock.connect(args.endpoint)
            except zmq.ZMQError as e:
                raise CLIError(f"cannot connect to {args.endpoint!r}: {e}", 2) from None
        start = time.monotonic()
        for path, series, index, image in _planned_frames(args):
            meta = merge_meta(image.meta, extra_meta)
            try:
                parts = encode_frame(image.pixels, series=series, frame=index, **meta)
            except ValueError as e:
                raise CLIError(f"{image.source}: {e}", 2) from None
            if args.rate is not None:
                delay = start + sent / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                sock.send_multipart(parts, copy=False)
            except zmq.Again:
                hint = " (check the CURVE keys)" if curve else " (is `fringelive serve` running?)"
                raise CLIError(f"no daemon took frame {series!r} #{index} at {args.endpoint} "
                               f"within {args.timeout:g} s{hint}; {sent} frames sent", 1) from None
            sent += 1
            sent_bytes += sum(len(p) for p in parts)
            per_file.setdefault((path, series), []).append(index)
            if args.verbose:
                h, w = image.pixels.shape
                print(f"sent {series} #{index} {h}x{w} {image.pixels.dtype} from {image.source}",
                      flush=True)
        elapsed = time.monotonic() - start
    except ReaderError as e:
        sock.close(linger=0)
        ctx.term()
        raise CLIError(f"{e}; {sent} frames sent", 1) from None
    except BaseException:  # CLIError, Ctrl-C: drop what is queued and leave
        sock.close(linger=0)
        ctx.term()
        raise
    sock.close()  # lingers up to --timeout for the last queued frames
    ctx.term()
    for (path, series), indices in per_file.items():
        print(f"{path.name}: {len(indices)} frames as series {series!r} "
              f"#{min(indices)}..{max(indices)}")
    rate = sent / elapsed if elapsed > 0 else float("inf")
    print(f"sent {sent} frames ({sent_bytes / 1e6:.1f} MB) to {args.endpoint} in "
          f"{elapsed:.2f} s ({rate:.1f} frames/s)")
    return 0


# --------------------------------------------------------------------------------------------
# watch
# --------------------------------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    import zmq


    if args.since is not None and args.control is None:
        raise CLIError("--since needs --control EP (the daemon's control endpoint, for its results journal)", 2)
    filler = GapFiller(args.control, since=args.since)
    recorder = None
    if args.record is not None:
        try:
            recorder = ResultRecorder(args.record, endpoint=args.endpoint)
        except (OSError, ImportError) as e:
            raise CLIError(f"cannot record to {args.record}: {e}", 2) from None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, args.hwm)
    received = results = errors = 0
    reason = "interrupted"
    try:
        _apply_curve(sock, args)
        for topic in (RESULT_TOPIC, ERROR_TOPIC):
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)  # subscription live: ready
        try:
            sock.connect(args.endpoint)
        except zmq.ZMQError as e:
            raise CLIError(f"cannot connect to {args.endpoint!r}: {e}", 2) from None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        pending = filler.start()  # --since: the journal first; live duplicates are left out by seq
        poller.register(monitor, zmq.POLLIN)
        timeout_ms = None if args.timeout is None else int(args.timeout * 1000)
        while args.count is None or received < args.count:
            events = dict(poller.poll(0 if pending else filler.poll_ms(timeout_ms)))
            if not events and not pending:
                pending = filler.idle()  # quiet: the tail a disconnected subscriber missed (--control)
                if not pending and filler.timed_out(args.timeout):
                    reason = "timeout"
                    break
                continue
            if monitor in events:
                if subscription_ready(monitor):
                    announce_ready(args.endpoint, args.ready_file)
                    poller.unregister(monitor)
                    sock.disable_monitor()
                    monitor.close(linger=0)
                continue
            if not pending:  # seq gaps filled from the journal (stream/catchup.py)
                pending = filler.feed(sock.recv_multipart(copy=False))
            if not pending:
                continue
            parts = pending.pop(0)
            topic = bytes(parts[0])
            try:
                if topic == RESULT_TOPIC:
                    header, mask, probs = decode_result(parts)
                    print(format_result_line(header), flush=True)
                    if recorder is not None:
                        recorder.add_result(header, mask, probs if args.probabilities else None)
                    results += 1
                elif topic == ERROR_TOPIC:
                    header = decode_error(parts)
                    print(format_error_line(header), flush=True)
                    if recorder is not None:
                        recorder.add_error(header)
                    errors += 1
                else:
                    continue
            except ProtocolError as e:
                print(f"WARNING malformed {topic[:16]!r} message ({e.reason}): {e.detail}",
                      file=sys.stderr, flush=True)
                continue
            received += 1
        else:
            reason = "count"
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        sock.close()
        ctx.term()
        if recorder is not None:
            recorder.close()
    saved = f", recorded to {args.record}" if recorder is not None else ""
    print(f"watch: {results} results, {errors} errors ({reason}){saved}", file=sys.stderr)
    if filler.gaps or filler.recovered:
        print(f"watch: {len(filler.gaps)} gap(s) seen, {filler.recovered} message(s) replayed from the journal, "
              f"{filler.unrecovered} missed for good", file=sys.stderr)
    if reason == "timeout" and (received == 0 or args.count is not None):
        wanted = f" of {args.count}" if args.count is not None else ""
        print(f"watch: no data for {args.timeout:g} s after {received}{wanted} messages",
              file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------

def register(sub: Any) -> None:
    send = sub.add_parser(
        "send", help=summary("send"),
        description="Send every image of FILES as one frame ([msgpack header, raw pixels]) "
        "over a ZeroMQ PUSH socket. A stack (N, H, W) or multi-page TIFF sends N frames. "
        "Metadata found in the files is sent; --meta overrides it.")
    send.add_argument("files", nargs="*", type=Path, metavar="FILE",
                      help="image files: .npy, .tif/.tiff, .dm3/.dm4, .ser, .emd (may also "
                           "follow --meta)")
    send.add_argument("--endpoint", default=DEFAULT_INGEST_ENDPOINT,
                      help=f"daemon ingest address, a ZeroMQ endpoint (default: "
                           f"{DEFAULT_INGEST_ENDPOINT}); with --bind the address to bind (tcp "
                           "port 0 = OS-assigned, printed)")
    send.add_argument("--bind", action="store_true",
                      help="bind the PUSH socket and let several daemons ([ingest] bind = false) "
                           "connect: ZeroMQ deals frames round-robin among them (docs/scaling.md); "
                           "no unit")
    send.add_argument("--wait-workers", type=nonnegative_int, default=0, metavar="N",
                      help="with --bind: wait (up to --timeout) until N daemons have connected "
                           "before the first frame, so frames are spread over all of them "
                           "(daemons, default: 0 = do not wait)")
    send.add_argument("--rate", type=positive_float, metavar="FPS",
                      help="frames per second (default: as fast as the daemon takes them)")
    send.add_argument("--series", metavar="NAME",
                      help="series name for all frames (default: each file's name without "
                           "suffix); no unit")
    send.add_argument("--start-frame", type=nonnegative_int, default=0, metavar="N",
                      help="index of the first frame of each series (frames, default: 0)")
    send.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                      help="send the file list N times, frame indices continuing "
                           "(times, default: 1)")
    send.add_argument("--meta", action="extend", nargs="+", metavar="KEY=VALUE",
                      help="header metadata overriding the files' (units in the key names, e.g. "
                           "pixel_size_nm=0.02 dose_e_per_A2=400 voltage_kv=300 tags.grid=3; "
                           "values parse as int/float/bool/null/str; dotted keys nest)")
    send.add_argument("--timeout", type=positive_float, default=DEFAULT_SEND_TIMEOUT_S,
                      metavar="S", help="give up when the daemon takes no frame for this long "
                                        f"(seconds, default: {DEFAULT_SEND_TIMEOUT_S:g})")
    send.add_argument("--ack", action="store_true",
                      help="acknowledged sending to a daemon with [ingest] mode = \"ack\" (serve --ingest-mode ack): "
                           "keep each frame until it is processed, send it again after a reconnect; --hwm is the "
                           "credit window (frames without an ack); --timeout S: give up after S s without progress")
    send.add_argument("--hwm", type=positive_int, default=DEFAULT_SEND_HWM, metavar="N",
                      help=f"send high-water mark: frames queued before sending blocks "
                           f"(frames, default: {DEFAULT_SEND_HWM})")
    send.add_argument("--stack", action="store_true",
                      help="a 3-D .npy is a stack (N, H, W) of frames whatever its shape (default: only when "
                           "the first axis is shorter than both image sides; (H, W, 3|4) is RGB/RGBA); no unit")
    send.add_argument("--grey", action="store_true",
                      help="reduce colour images (RGB/RGBA .npy, .tif, .png, .jpg) to one grey channel "
                           "(BT.601 luma; exact when R = G = B); default: refuse colour; no unit")
    send.add_argument("-v", "--verbose", action="store_true",
                      help="print one line per frame sent (no unit)")
    _add_curve_options(send)
    send.set_defaults(func=cmd_send)

    watch = sub.add_parser(
        "watch", help=summary("watch"),
        description="Subscribe to b'result' and b'error' messages, print one line per message, "
        "optionally record masks and headers to HDF5. Stops after --count messages, after "
        "--timeout seconds without data, or on Ctrl-C (the file is closed cleanly). Exit code 1 "
        "when the timeout hit before --count messages (or before any message).")
    watch.add_argument("--endpoint", default=DEFAULT_RESULTS_ENDPOINT,
                       help=f"daemon results address, a ZeroMQ endpoint (default: "
                            f"{DEFAULT_RESULTS_ENDPOINT})")
    watch.add_argument("--record", type=Path, metavar="FILE.h5",
                       help="write masks, frame indices and headers to this HDF5 file "
                            "(overwritten; layout in docs/protocol.md); no unit")
    watch.add_argument("--count", type=positive_int, metavar="N",
                       help="stop after N messages, results and errors together (messages, "
                            "default: no limit)")
    watch.add_argument("--timeout", type=positive_float, metavar="S",
                       help="stop after this long without a message (seconds, default: wait "
                            "forever)")
    watch.add_argument("--probabilities", action="store_true",
                       help="also record the float16 probability maps when the daemon sends "
                            "them (no unit)")
    watch.add_argument("--control", metavar="EP",
                       help="the daemon's control endpoint, e.g. tcp://127.0.0.1:5557: fill gaps in the "
                            "seq numbers (and a missed tail) from its results journal ([journal] enabled)")
    watch.add_argument("--since", type=nonnegative_int, metavar="SEQ",
                       help="first replay every journalled message from sequence number SEQ on (needs --control)")
    watch.add_argument("--hwm", type=positive_int, default=1000, metavar="N",
                       help="receive high-water mark (messages, default: 1000)")
    watch.add_argument("--ready-file", type=Path, metavar="PATH",
                       help="once the subscription is live (ZeroMQ handshake with the daemon done), write "
                            "the endpoint to PATH and print 'watch: ready' on stderr: start the sender after "
                            "it and no message is lost to the slow-joiner window (docs/protocol.md); no unit")
    _add_curve_options(watch)
    watch.set_defaults(func=cmd_watch)
