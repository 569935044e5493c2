"""Channel overhead: the same uploads over TLS 1.3 (mutual auth) and over plain TCP, side by side.

One in-process server per mode on loopback, one device, identical upload sequences
(SmolLM2-135M payload shape), modes interleaved over several rounds; reports the median
wall time per mode, the TLS/plain ratio and the bytes on the wire. Two server roles:
`side_tuning` (the real PAE server: cache + training step per upload, what a user sees)
and `ack_only` (decode, record, acknowledge: isolates the channel's own cost).

    python benchmarks/transport_overhead.py            # 40 uploads x 16 samples, 3 rounds
    python benchmarks/transport_overhead.py --quick    # 8 uploads, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from protocol.wire.messages import Message, Upload, UploadAck
from protocol.server.side_tuning import SideTuningServer
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from transport_load import synthetic_upload


class AckOnlyServer(SideTuningServer):
    """Validates, records and acknowledges uploads without caching or training: the channel-only reference."""

    def handle(self, message: Message) -> Message:
        if isinstance(message, Upload):
            return UploadAck(stored=len(message.sample_ids), duplicates=0)
        return super().handle(message)


ROLES = {"side_tuning": SideTuningServer, "ack_only": AckOnlyServer}


def timed_run(root: Path, keys: KeyDirectory, tls: bool, role: str, uploads: list[Upload]) -> dict[str, float]:
    transport = TransportServer(root / f"{role}-{'tls' if tls else 'plain'}-{time.monotonic_ns()}",
                                keys if tls else None, endpoint_factory=ROLES[role])
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("bench") if tls else (None, None)
        channel = NetworkChannel(*running.address, context, pinned)
        began = time.perf_counter()
        for upload in uploads:
            channel.request(upload)
        seconds = time.perf_counter() - began
        channel.close()
    return {"seconds": seconds, "bytes_up": channel.bytes_up, "bytes_down": channel.bytes_down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.uploads, args.rounds = 8, 2
    rng = np.random.default_rng(0)
    uploads = [synthetic_upload(rng, args.batch) for _ in range(args.uploads)]
    payload = sum(len(u.sample_ids) for u in uploads)
    report: dict[str, object] = {"uploads": args.uploads, "samples": payload, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = KeyDirectory(root / "keys")
        keys.init(["bench"])
        for role in ROLES:
            runs: dict[str, list[dict[str, float]]] = {"tls": [], "plain": []}
            for _ in range(args.rounds):
                for mode in ("plain", "tls"):
                    runs[mode].append(timed_run(root, keys, mode == "tls", role, uploads))
            seconds = {mode: statistics.median(r["seconds"] for r in rs) for mode, rs in runs.items()}
            report[role] = {
                "tls_seconds_median": round(seconds["tls"], 3),
                "plain_seconds_median": round(seconds["plain"], 3),
                "tls_over_plain": round(seconds["tls"] / seconds["plain"], 3),
                "tls_bytes_up": runs["tls"][0]["bytes_up"], "plain_bytes_up": runs["plain"][0]["bytes_up"],
                "wire_bytes_ratio": round(runs["tls"][0]["bytes_up"] / runs["plain"][0]["bytes_up"], 4),
                "tls_MB_per_s": round(runs["tls"][0]["bytes_up"] / seconds["tls"] / 1e6, 1),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
