"""Load benchmark of the network transport on loopback (prints JSON).

A real `secure-assist serve` process (TLS 1.3, mutual auth) and N concurrent devices
(threads, one identity each) uploading synthetic samples of the real SmolLM2-135M shape
(30 layers x 576, float16, 2 classes) in batches. Checks that no sample is lost and that
no device's samples appear in another device's namespace; reports samples/s and
p50/p99 upload latency.

    python benchmarks/transport_load.py            # 32 devices x 200 samples
    python benchmarks/transport_load.py --quick    # 4 devices x 32 samples
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from protocol.server.cache import ActivationCache
from protocol.wire.messages import Upload
from protocol.server.transcript import CACHE_FILE
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.serve_process import ServeProcess

LAYERS, HIDDEN, CLASSES = 30, 576, 2


def synthetic_upload(rng: np.random.Generator, n: int) -> Upload:
    """An upload with the real SmolLM2-135M payload shape and random values."""
    return Upload(sample_ids=rng.integers(0, 256, (n, 16), dtype=np.uint8),
                  activations=rng.standard_normal((n, LAYERS, HIDDEN)).astype(np.float16),
                  delta=rng.uniform(-1, 1, (n, CLASSES)).astype(np.float32),
                  layers=tuple(range(1, LAYERS + 1)))


def run_device(keys: KeyDirectory, name: str, port: int, samples: int, batch: int, seed: int,
               latencies: list[float], sent: dict[str, set[bytes]]) -> None:
    rng = np.random.default_rng(seed)
    context, pinned = keys.device_context(name)
    channel = NetworkChannel("127.0.0.1", port, context, pinned, mode="side_network")
    ids: set[bytes] = set()
    for start in range(0, samples, batch):
        upload = synthetic_upload(rng, min(batch, samples - start))
        began = time.perf_counter()
        ack = channel.request(upload)
        latencies.append(time.perf_counter() - began)
        if ack.stored != len(upload.sample_ids):
            raise RuntimeError(f"{name}: server stored {ack.stored} of {len(upload.sample_ids)}")
        ids.update(bytes(i) for i in upload.sample_ids)
    channel.close()
    sent[name] = ids


def timed_threads(threads: list[threading.Thread]) -> float:
    """Start the threads together, wait for all; the seconds it took."""
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--samples", type=int, default=200, help="samples per device")
    parser.add_argument("--batch", type=int, default=16, help="samples per upload")
    parser.add_argument("--quick", action="store_true", help="4 devices x 32 samples")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.samples = 4, 32
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = KeyDirectory(root / "keys")
        names = [f"device{i:02d}" for i in range(args.devices)]
        keys.init(names)
        serve = ServeProcess(root, keys).start()
        latencies: list[float] = []
        sent: dict[str, set[bytes]] = {}
        threads = [threading.Thread(target=run_device, args=(keys, n, serve.port, args.samples, args.batch, i,
                                                             latencies, sent)) for i, n in enumerate(names)]
        elapsed = timed_threads(threads)
        stop_seconds = serve.stop(timeout=120)
        lost = leaked = 0
        for fingerprint, name in keys.trusted_fingerprints().items():
            cache = ActivationCache(root / "server" / "devices" / fingerprint / CACHE_FILE)
            stored = {bytes(i) for i in cache.load_all()[0]}
            cache.close()
            lost += len(sent.get(name, set()) - stored)
            leaked += len(stored - sent.get(name, set()))
        total = sum(len(ids) for ids in sent.values())
    print(json.dumps({
        "devices": args.devices, "samples_per_device": args.samples, "batch": args.batch,
        "payload": f"{LAYERS}x{HIDDEN} float16 + {CLASSES} float32 per sample (SmolLM2-135M shape)",
        "transport": "TLS 1.3, mutual auth, separate `serve` process, loopback",
        "samples_uploaded": total, "samples_expected": args.devices * args.samples,
        "samples_lost": lost, "samples_in_wrong_namespace": leaked,
        "clean_shutdown_rc": serve.process.returncode, "stop_seconds": stop_seconds,
        "seconds": round(elapsed, 2), "samples_per_second": round(total / elapsed, 1),
        "upload_latency_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "upload_latency_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
        "cpu_cores": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
