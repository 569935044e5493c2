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
from typing import Callable

import numpy as np

import tenseal.sealapi as seal

from protocol.modes.ckks_ridge.context import (encryption_level, encryption_parameters, join_buffer, seal_context,
                                               to_bytes)
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitRequest
from protocol.modes.ckks_ridge.packing import CkksParameters
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

# Connections, handshakes, ckks_ridge.

def stall_handshakes(address: Address, count: int) -> list[socket.socket]:
    """`count` connections that start a TLS handshake (a record header announcing a ClientHello) and
    stall there (the caller closes them)."""
    sockets = []
    for _ in range(count):
        try:
            sock = socket.create_connection(address, timeout=2.0)
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a 512-byte handshake record: a ClientHello's first byte
        except OSError:
            break
        sockets.append(sock)
    return sockets


def hold_replies(address: Address, keys: KeyDirectory, name: str, connections: int) -> list[_Link]:
    """`connections` links of device `name` (side_network) that ask for its weights and never read them."""
    links = []
    for _ in range(connections):
        link = connect(address, keys, name)
        link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the reply on the server's side
        exchange(link, encode_message(Hello(mode="side_network")))
        link.send(encode_frame(1, encode_message(FetchWeights())))
        links.append(link)
    return links


def ckks_upload(samples: int, ciphertexts: list[bytes], context: bytes, seed: int | None = None) -> EncryptedUpload:
    """A ckks_ridge upload of `samples` random activations (2 x 8) with these per-class ciphertexts
    (random sample ids unless `seed` is given)."""
    rng = np.random.default_rng(seed)
    buffer, sizes = join_buffer(ciphertexts)
    return EncryptedUpload(sample_ids=rng.integers(0, 256, (samples, 16), dtype=np.uint8),
                           activations=rng.standard_normal((samples, 2, 8)).astype(np.float32),
                           ciphertexts=buffer, ciphertext_sizes=sizes,
                           public_context=np.frombuffer(context, dtype=np.uint8).copy(), layers=(1, 2))


def ckks_encryptions(parameters: CkksParameters = CkksParameters()) -> tuple[bytes, Callable[[], bytes]]:
    """(public context, a maker of valid fresh ciphertexts) under a key of the attacker's own: encryptions
    of zero at the fit's level, as valid to the server as a device's."""
    sealed = encryption_parameters(parameters)
    context = seal_context(sealed)
    encryptor = seal.Encryptor(context, seal.KeyGenerator(context).secret_key())

    def encrypt_zero() -> bytes:
        ciphertext = seal.Ciphertext()
        encryptor.encrypt_zero_symmetric(encryption_level(context), ciphertext)
        return to_bytes(ciphertext)

    return to_bytes(sealed), encrypt_zero


def _request_outcome(link: _Link, message: Message, sequence: int) -> str:
    reply = exchange(link, encode_message(message), sequence)
    return getattr(reply, "reason", f"answered {reply.TYPE}")


def _ckks_attack(address: Address, keys: KeyDirectory, name: str, uploads: list[EncryptedUpload],
                 fit_context: bytes) -> str:
    """Name ckks_ridge, send `uploads` then a fit request; the first refusal (or the fit's answer)."""
    link = connect(address, keys, name)
    try:
        exchange(link, encode_message(Hello(mode="ckks_ridge")))
        for sequence, upload in enumerate(uploads, start=1):
            answer = _request_outcome(link, upload, sequence)
            if not answer.startswith("answered"):
                return answer
        request = HeFitRequest(public_context=np.frombuffer(fit_context, dtype=np.uint8).copy(), n_features=128,
                               ridge=10.0)
        return _request_outcome(link, request, len(uploads) + 1)
    finally:
        link.close()


def _net_attack(kind: str, address: Address, keys: KeyDirectory, name: str, stop: threading.Event,
                seen: Counter) -> None:
    """One round of attack `kind` (rows of this block), counting what the server did. Rounds that make
    the server work as an honest device would (train, open a device's role) pause between rounds: their
    cost is that of any device, and what is measured is that it stays bounded."""
    if kind == "stalled_handshakes":
        sockets = stall_handshakes(address, 256)
        seen["handshakes stalled"] += len(sockets)
        stop.wait(3.0)
        for sock in sockets:
            sock.close()
    elif kind == "garbage_bytes":  # the log line each one triggers is what it attacks: 64 a second
        for _ in range(64):
            with socket.create_connection(address, timeout=2.0) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        seen["garbage connections"] += 64
        stop.wait(1.0)
    elif kind == "unread_replies":
        NetworkChannel(*address, *keys.device_context(name), mode="side_network").request(
            synthetic_upload(4, 2, 64, seed=5))
        links = hold_replies(address, keys, name, 4)
        stop.wait(3.0)
        seen.update(outcome_kind(outcome(link, 1)) for link in links)
        for link in links:
            link.close()
    elif kind == "no_hello":
        link = connect(address, keys, name)
        seen[outcome_kind(_request_outcome(link, synthetic_upload(4, 2, 8), 0))] += 1
        link.close()
    elif kind == "idle_devices":  # a device that comes, uploads, and is gone
        device = NetworkChannel(*address, *keys.device_context(name), mode="side_network")
        seen[outcome_kind(f"answered {device.request(synthetic_upload(4, 2, 8, seed=9)).TYPE}")] += 1
        device.close()
        stop.wait(1.0)
    elif kind == "revoked_in_training":
        revoked, device = new_device(address, keys, samples=512)
        done = threading.Thread(target=lambda: seen.update([outcome_kind(_train_outcome(device))]))
        done.start()
        stop.wait(1.0)
        revoke(keys, revoked)
        done.join(60.0)
        stop.wait(5.0)
    elif kind in ("ckks_garbage", "ckks_many_blocks"):
        context, encrypt_zero = ckks_encryptions()
        if kind == "ckks_garbage":  # one sample, two 1 MiB "ciphertexts" of random bytes
            junk = np.random.default_rng().integers(0, 256, MIB, dtype=np.uint8).tobytes()
            uploads = [ckks_upload(1, [junk, junk], context)]
        else:  # one full block, then one-sample blocks: each costs the fit as much as a full one
            uploads = [ckks_upload(256, [encrypt_zero(), encrypt_zero()], context)]
            uploads += [ckks_upload(1, [encrypt_zero(), encrypt_zero()], context) for _ in range(8)]
        seen[outcome_kind(_ckks_attack(address, keys, name, uploads, context))] += 1
        stop.wait(1.0)


def _train_outcome(device: NetworkChannel) -> str:
    try:
        return f"answered {device.request(TrainUntil(epochs_total=1000)).TYPE}"
    except (ProtocolError, OSError) as exc:
        return str(exc)


NET_ATTACKS = ("stalled_handshakes", "garbage_bytes", "unread_replies", "no_hello", "idle_devices",
               "revoked_in_training", "ckks_garbage", "ckks_many_blocks")
NET_OUTCOMES = ("hello", "max_handshakes", "write_seconds", "max_unsent_replies_mib", "malformed ciphertext",
                "takes at most", "ckks_ciphertext_bytes_per_sample", "max_ckks_fit_products", "nothing to fit")


# Every attack that runs against a live server, by name (also the attacking device's name).
ATTACKS = ("descriptor_flood", "oversized_shape", "train_forever", "half_sent_frames", "resend",
           "huge_malformed_frame", "hostile_json", "revoked_device", "fuzz_frames") + QUOTA_ATTACKS + NET_ATTACKS
_OUTCOMES = QUOTA_OUTCOMES + NET_OUTCOMES + (
    "max_connections_per_device", "max_partial_frames_mib", "read_seconds", "max_epochs", "max_width", "max_layers",
    "max_classes", "zero samples", "revoked", "header of", "closed", "invalid message")


def outcome_kind(text: str) -> str:
    """An attack's outcome reduced to the limit or rule that stopped it."""
    return next((key for key in _OUTCOMES if key in text), text[:60])


# Attack threads add and revoke devices at once: each edit of the allow-list reads, changes and
# rewrites the whole file, so two at a time would lose one (a device the server has never heard of).
_ALLOW_LIST_EDIT = threading.Lock()


def revoke(keys: KeyDirectory, name: str) -> None:
    """Revoke device `name`, one allow-list edit at a time."""
    with _ALLOW_LIST_EDIT:
        keys.revoke(name)


def new_device(address: Address, keys: KeyDirectory, samples: int = 4) -> tuple[str, NetworkChannel]:
    """A newly allow-listed device (its name, its channel) that has uploaded `samples` samples."""
    name = f"revoked-{time.monotonic_ns()}"
    with _ALLOW_LIST_EDIT:
        keys.add_device(name)
    channel = NetworkChannel(*address, *keys.device_context(name), reconnect_seconds=1.0, mode="side_network")
    channel.request(synthetic_upload(samples, 2, 8))
    return name, channel


def revoked_channel(address: Address, keys: KeyDirectory) -> NetworkChannel:
    """A new device that uploads once, keeps its connection open, and is then revoked."""
    name, channel = new_device(address, keys)
    revoke(keys, name)
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
            if kind in NET_ATTACKS:
                _net_attack(kind, address, keys, name, stop, seen)
            elif kind == "descriptor_flood":
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
            for payload in payloads:  # every connection names its mode first
                link = connect(address, keys, name)
                exchange(link, encode_message(Hello(mode="side_network")))
                reply = exchange(link, payload, 1)
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
    parser.add_argument("--attacks", type=lambda text: tuple(text.split(",")), default=ATTACKS,
                        help="comma-separated attacks to run (default: every one)")
    args = parser.parse_args()
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    host, port = args.target.rsplit(":", 1)
    keys, stop = KeyDirectory(Path(args.keys)), threading.Event()
    seen = {kind: Counter() for kind in args.attacks}
    for kind in args.attacks:
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
