"""Hostile clients of `secure-assist serve`: the attacks the server limits answer, each bounded in size and time.

One implementation serves the regression tests (`tests/test_transport_abuse.py`) and the abuse
benchmark (`benchmarks/transport_abuse.py`), which runs every attack in a loop in a process of its
own (`python -m protocol.transport.abuse`, see `main`). Authenticated attacks use an allow-listed
identity over a raw TLS link, so they can send what `NetworkChannel` never would: half a
frame, a message with zero samples, hostile metadata. Loopback use only.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from protocol.wire.codec import encode
from protocol.errors import ProtocolError
from protocol.server.limits import MIB
from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.wire.messages import (
    PROTOCOL_VERSION, ErrorReply, FetchWeights, Hello, Message, TrainUntil, Upload, decode_message, encode_message,
)
from protocol.transport.client import NetworkChannel, _Link
from protocol.transport.framing import HEADER, HEADER_BYTES, MAGIC, FRAME_VERSION, encode_frame, parse_header
from protocol.transport.fuzz import hostile_frames
from protocol.transport.identity import KeyDirectory

Address = tuple[str, int]


def connect(address: Address, keys: KeyDirectory, name: str, timeout: float = 10.0) -> _Link:
    """An authenticated TLS link of device `name` that sends raw frames."""
    context, pinned = keys.device_context(name)
    return _Link(*address, context, pinned, timeout=timeout)


def read_reply(link: _Link, sequence: int = 0) -> Message:
    """The next reply frame's message."""
    header = parse_header(link.recv_exact(HEADER_BYTES), sequence, 2**32 - 1)
    return decode_message(link.recv_exact(header.length))


def exchange(link: _Link, payload: bytes, sequence: int = 0) -> Message:
    """Send one frame carrying `payload`, return the reply."""
    link.send(encode_frame(sequence, payload, max_frame_bytes=2**32 - 1))
    return read_reply(link, sequence)


def outcome(link: _Link, sequence: int = 0) -> str:
    """What the server did with a link: the ErrorReply's reason, or how the link ended."""
    try:
        reply = read_reply(link, sequence)
    except (ConnectionError, OSError, ProtocolError) as exc:
        return f"closed ({type(exc).__name__})"
    return getattr(reply, "reason", f"answered {reply.TYPE}")


def flood_descriptors(address: Address, count: int) -> list[socket.socket]:
    """`count` plain TCP connections that never start TLS (the caller closes them)."""
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(address, timeout=2.0))
        except OSError:  # the backlog is full: what is open already holds the server's descriptors
            break
    return sockets


def synthetic_upload(samples: int, layers: int, width: int, classes: int = 2, seed: int = 0) -> Upload:
    """An upload of random values with this shape (zero samples: a few hundred bytes, whatever the width)."""
    rng = np.random.default_rng(seed)
    return Upload(sample_ids=rng.integers(0, 256, (samples, 16), dtype=np.uint8),
                  activations=rng.standard_normal((samples, layers, width)).astype(np.float16),
                  delta=rng.standard_normal((samples, classes)).astype(np.float32),
                  layers=tuple(range(1, layers + 1)))


def huge_header_message(size: int) -> bytes:
    """A malformed message whose JSON header is ~`size` bytes of numbers: slow to parse, never valid."""
    numbers = ",".join(["1"] * (size // 2))
    header = ('{"__metadata__": {"type": "upload", "version": "%d", "fields": "{}"}, "pad": [%s]}'
              % (PROTOCOL_VERSION, numbers)).encode()
    return struct.pack("<Q", len(header)) + header


def hostile_json_messages() -> dict[str, bytes]:
    """Messages that made the old decoder raise something other than ProtocolError."""
    meta = {"type": "train_until", "version": str(PROTOCOL_VERSION)}
    deep = "[" * 100_000 + "]" * 100_000
    header = ('{"__metadata__": {"type": "fetch_weights", "version": "%d", "fields": "{}"}, "x": %s}'
              % (PROTOCOL_VERSION, deep)).encode()
    return {
        "5000-digit integer field": encode({}, {**meta, "fields": '{"epochs_total": ' + "9" * 5000 + "}"}),
        "100,000-deep fields": encode({}, {**meta, "fields": deep}),
        "100,000-deep header": struct.pack("<Q", len(header)) + header,
    }


def hold_partial_frames(address: Address, keys: KeyDirectory, name: str, connections: int, declared: int,
                        sent: int, timeout: float = 10.0) -> list[_Link]:
    """Open `connections` links as `name`, each sending a frame header for `declared` bytes and
    then only `sent` of them, and stall; return the links (the caller reads their outcome and closes)."""
    links = [connect(address, keys, name, timeout) for _ in range(connections)]

    def send_part(link: _Link) -> None:
        try:
            link.send(HEADER.pack(MAGIC, FRAME_VERSION, 0, declared) + bytes(sent))
        except OSError:  # the server stopped reading (it refused or dropped the frame): the attack is over
            pass

    threads = [threading.Thread(target=send_part, args=(link,), daemon=True) for link in links]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    return links


# --- storage and memory quotas -------------------------------------------------------------
# Attacks on what a device can make the server store or hold in bytes, whatever the mode:
# each runs on connections of its own, Hello first, and stops at the quota or limit named
# in its outcome (`protocol.server.quotas`).


def synthetic_generation_upload(samples: int, positions: int, layers: int, width: int,
                                seed: int = 0) -> GenerationUpload:
    """A generation upload of random values: `positions` loss positions per sample."""
    rng = np.random.default_rng(seed)
    rows = samples * positions
    return GenerationUpload(sample_ids=rng.integers(0, 256, (samples, 16), dtype=np.uint8),
                            counts=np.full(samples, positions, np.int64),
                            activations=rng.standard_normal((rows, layers, width)).astype(np.float16),
                            residual=rng.standard_normal((rows, width)).astype(np.float32),
                            layers=tuple(range(1, layers + 1)))


def mode_link(address: Address, keys: KeyDirectory, name: str, mode: str) -> _Link:
    """An authenticated link of device `name` whose first request named `mode` (raises if refused)."""
    link = connect(address, keys, name)
    reply = exchange(link, encode_message(Hello(mode=mode)))
    if isinstance(reply, ErrorReply):
        link.close()
        raise ProtocolError(reply.reason)
    return link


def requests_on_one_link(address: Address, keys: KeyDirectory, name: str, mode: str,
                         payloads: list[bytes]) -> list[str]:
    """Send `payloads` in order on one link after Hello; each reply's error reason or type
    (the server closes a link after an error, so nothing follows one)."""
    link, seen = mode_link(address, keys, name, mode), []
    try:
        for sequence, payload in enumerate(payloads, start=1):
            reply = exchange(link, payload, sequence)
            seen.append(getattr(reply, "reason", f"answered {reply.TYPE}"))
            if isinstance(reply, ErrorReply):
                break
    finally:
        link.close()
    return seen


def quota_attack_payloads(kind: str, round_number: int, width: int) -> tuple[str, list[bytes]]:
    """The mode and requests of one round of quota attack `kind`, for a server whose largest width is `width`."""
    upload = synthetic_upload(2, 2, width, seed=round_number)
    if kind == "resend_other_values":  # the same ids again with other values
        other = Upload(sample_ids=upload.sample_ids, activations=upload.activations + 1, delta=upload.delta,
                       layers=upload.layers)
        return "side_network", [encode_message(m) for m in (upload, other)]
    if kind == "fetch_repeat":  # the same weights reply, asked for again and again
        return "side_network", [encode_message(synthetic_upload(2, 2, width, seed=0))] + \
            [encode_message(FetchWeights())] * 8
    if kind == "disk_fill":  # new samples every round, until the device's disk quota
        return "side_network", [encode_message(synthetic_upload(1024, 2, width, seed=round_number))]
    if kind == "one_sample_first":  # a first upload of one sample, then training and a fetch
        return "side_network", [encode_message(m) for m in (synthetic_upload(1, 2, width, seed=0),
                                                            TrainUntil(epochs_total=2 + round_number), FetchWeights())]
    gram = HeadGram(gram=np.eye(width, dtype=np.float32))
    if kind == "gram_too_wide":
        return "generation", [encode_message(HeadGram(gram=np.eye(width + 1, dtype=np.float32)))]
    # "generation_positions": more loss positions per sample than the limit, then a fetch
    return "generation", [encode_message(m) for m in (gram, synthetic_generation_upload(1, 4, 2, width, seed=0),
                                                      FetchWeights(), synthetic_generation_upload(1, 200, 1, 8))]


def run_quota_attack(kind: str, address: Address, keys: KeyDirectory, seen: Counter, round_number: int,
                     width: int) -> None:
    """One round of quota attack `kind` as device `kind` (dashes for underscores); count the outcomes."""
    mode, payloads = quota_attack_payloads(kind, round_number, width)
    for reason in requests_on_one_link(address, keys, kind.replace("_", "-"), mode, payloads):
        seen[outcome_kind(reason)] += 1


QUOTA_ATTACKS = ("resend_other_values", "fetch_repeat", "disk_fill", "one_sample_first", "gram_too_wide",
                 "generation_positions")
QUOTA_OUTCOMES = ("max_device_disk_mib", "max_device_memory_mib", "max_server_memory_mib", "max_frame_mib",
                  "max_sample_kib", "max_positions_per_sample", "other values", "differ from earlier")
# --- end of storage and memory quotas --------------------------------------------------------


# Every attack that runs against a live server, by name (also the attacking device's name).
ATTACKS = ("descriptor_flood", "oversized_shape", "train_forever", "half_sent_frames", "resend",
           "huge_malformed_frame", "hostile_json", "revoked_device", "fuzz_frames") + QUOTA_ATTACKS
_OUTCOMES = QUOTA_OUTCOMES + ("max_connections_per_device", "max_partial_frames_mib", "read_seconds", "max_epochs",
                              "max_width", "max_layers", "max_classes", "zero samples", "revoked", "header of",
                              "closed", "invalid message")


def outcome_kind(text: str) -> str:
    """An attack's outcome reduced to the limit or rule that stopped it."""
    return next((key for key in _OUTCOMES if key in text), text[:60])


def revoked_channel(address: Address, keys: KeyDirectory) -> NetworkChannel:
    """A new device that uploads once, keeps its connection open, and is then revoked."""
    name = f"revoked-{time.monotonic_ns()}"
    keys.add_device(name)
    channel = NetworkChannel(*address, *keys.device_context(name), reconnect_seconds=1.0, mode="side_network")
    channel.request(synthetic_upload(4, 2, 8))
    keys.revoke(name)
    return channel


def attack_loop(kind: str, address: Address, keys: KeyDirectory, stop: threading.Event, seen: Counter,
                frame_bytes: int, flood: int, width: int = 64) -> None:
    """Run attack `kind` until `stop`, as device `kind` (dashes for underscores); count the outcomes.
    `frame_bytes`: the server's frame limit; `flood`: connections the descriptor flood opens;
    `width`: the server's --max-width (the quota attacks stay within the shape limits)."""
    name = kind.replace("_", "-")
    rng = np.random.default_rng(ATTACKS.index(kind))
    payloads = {"oversized_shape": [encode_message(synthetic_upload(0, 1, 1_000_000)),
                                    encode_message(synthetic_upload(1, 2, 5000))],
                "train_forever": [encode_message(TrainUntil(epochs_total=10**9))],
                "resend": [encode_message(synthetic_upload(4096, 2, 64, seed=3))],  # 1 MiB, the same each time
                "huge_malformed_frame": [huge_header_message(frame_bytes - MIB)],
                "hostile_json": list(hostile_json_messages().values())}.get(kind, [])
    revoked = revoked_channel(address, keys) if kind == "revoked_device" else None
    rounds = 0
    while not stop.is_set():
        rounds += 1
        try:
            if kind == "descriptor_flood":
                sockets = flood_descriptors(address, flood)
                seen["connections opened"] += len(sockets)
                stop.wait(2.0)  # silent past SILENT_SECONDS: the server sheds them before any talking peer
                for sock in sockets:
                    sock.close()
            elif kind == "half_sent_frames":  # one connection more than the per-device default
                links = hold_partial_frames(address, keys, name, 5, frame_bytes, frame_bytes - frame_bytes // 16)
                seen.update(outcome(link) for link in links)
                for link in links:
                    link.close()
            elif revoked is not None:  # an open connection, revoked after it was opened
                revoked.request(synthetic_upload(4, 2, 8))
                seen["answered upload_ack"] += 1
            elif kind in QUOTA_ATTACKS:
                run_quota_attack(kind, address, keys, seen, rounds, width)
            elif kind == "fuzz_frames":
                _, frame = next(hostile_frames(rng, 1, frame_bytes))
                link = connect(address, keys, name)
                link.send(frame)
                seen[outcome_kind(outcome(link))] += 1
                link.close()
            for payload in payloads:
                link = connect(address, keys, name)
                reply = exchange(link, payload)
                seen[outcome_kind(getattr(reply, "reason", f"answered {reply.TYPE}"))] += 1
                link.close()
        except (OSError, ConnectionError, ProtocolError) as exc:
            seen[outcome_kind(str(exc) if "revoked" in str(exc) else f"closed ({type(exc).__name__})")] += 1
        stop.wait(0.05)


def main() -> None:
    """`python -m protocol.transport.abuse --target HOST:PORT --keys DIR`: every attack in its own thread
    until stdin closes. Prints "ready" once each attack has run; a line "snapshot" on stdin fixes the
    counts to report; they are printed as JSON at the end."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT of the server (loopback)")
    parser.add_argument("--keys", required=True, help="key directory holding a device per attack name")
    parser.add_argument("--frame-mib", type=float, default=64.0, help="the server's --max-frame-mib")
    parser.add_argument("--max-width", type=int, default=64, help="the server's --max-width")
    parser.add_argument("--flood", type=int, default=1024, help="connections of the descriptor flood")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    keys, stop = KeyDirectory(Path(args.keys)), threading.Event()
    seen = {kind: Counter() for kind in ATTACKS}
    for kind in ATTACKS:
        threading.Thread(target=attack_loop, args=(kind, (host, int(port)), keys, stop, seen[kind],
                                                   int(args.frame_mib * MIB), args.flood, args.max_width),
                         daemon=True).start()
    while not all(seen.values()):  # every attack has run once: the server is under all of them
        time.sleep(0.1)
    print("ready", flush=True)
    snapshot = None
    for line in sys.stdin:
        if line.strip() == "snapshot":
            snapshot = {kind: dict(counts.most_common(4)) for kind, counts in seen.items()}
    stop.set()
    print(json.dumps(snapshot or {kind: dict(counts.most_common(4)) for kind, counts in seen.items()}))


if __name__ == "__main__":
    main()
