"""What the storage and memory attacks cost the server now, against its quotas (prints JSON).

Each storage and memory attack that the server endpoint answers runs in process against the
real side-network and generation servers under `ServerLimits()` defaults (sizes scaled down
where noted; about two minutes on two cores): bytes the device's transcript and directory grew
by, bytes the process wrote, CPU seconds, and the quota each is held to. The checkpoint attack
runs the same training twice side by side: checkpoints by time (the default) and after every
epoch (the old way).

    python benchmarks/server_quotas.py
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from protocol.errors import ProtocolError
from protocol.modes.generation.messages import HeadGram
from protocol.modes.generation.server import GenerationServer
from protocol.server.limits import MIB, ServerLimits
from protocol.server.quotas import directory_bytes
from protocol.server.side_tuning import SideTuningServer
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import TRANSCRIPT_FILE
from protocol.transport.abuse import synthetic_generation_upload, synthetic_upload
from protocol.wire.channel import InProcessChannel
from protocol.wire.messages import FetchWeights, TrainUntil, Upload, encode_message


def transcript_bytes(workdir: Path) -> int:
    return (workdir / TRANSCRIPT_FILE).stat().st_size


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (the kernel's count)."""
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("wchar")).split()[1])


def refusal(channel: InProcessChannel, message: object) -> str:
    """The flag of the limit an ErrorReply names, the start of its reason if it names none, or 'accepted'."""
    try:
        channel.request(message)
    except ProtocolError as exc:
        reason = str(exc).split(": ", 1)[-1]
        return reason.rsplit("(", 1)[-1].rstrip(")") if "(--" in reason else reason[:48]
    return "accepted"


def resent_and_refused(root: Path) -> dict:
    """Cached ids re-sent with other values ×8, uploads of another layer count ×8, FetchWeights ×32
    at the SmolLM2-135M shape (30 layers × 576; 8 MiB uploads)."""
    server = SideTuningServer(root, limits=ServerLimits())
    channel = InProcessChannel(server)
    upload = synthetic_upload(240, 30, 576, seed=1)
    channel.request(upload)
    before = transcript_bytes(root)
    other = Upload(sample_ids=upload.sample_ids, activations=upload.activations + 1, delta=upload.delta,
                   layers=upload.layers)
    outcomes = {refusal(channel, other) for _ in range(8)} | {refusal(channel, synthetic_upload(240, 29, 576, seed=2))
                                                               for _ in range(8)}
    refused_growth = transcript_bytes(root) - before
    before = transcript_bytes(root)
    began = time.process_time()
    for _ in range(32):
        channel.request(FetchWeights())
    result = {"upload_bytes": len(encode_message(upload)),
              "refusals": sorted(outcomes), "transcript_growth_refused_16": refused_growth,
              "transcript_growth_fetch_32": transcript_bytes(root) - before,
              "fetch_cpu_seconds_32": round(time.process_time() - began, 3),
              "directory_bytes": directory_bytes(root),
              "disk_quota_bytes": int(ServerLimits().max_device_disk_mib * MIB)}
    server.close()
    return result


def network_beyond_a_frame(root: Path) -> dict:
    """A 1-sample upload at the default shape maxima (64 layers × 4096): refused before a network is built."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    server = SideTuningServer(root, limits=ServerLimits())
    channel = InProcessChannel(server)
    outcome = refusal(channel, synthetic_upload(1, 64, 4096, seed=3))
    result = {"outcome": outcome, "transcript_bytes": transcript_bytes(root),
              "network_built": server.network is not None,
              "peak_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024, 1)}
    server.close()
    return result


def generation_sample_size(root: Path) -> dict:
    """Generation: one sample of 512 positions × 28 layers × 1024, then fetches
    of a network at 28 × 1024: the Gram matrix is decomposed once."""
    limits = ServerLimits()
    server = GenerationServer(root, limits=limits)
    channel = InProcessChannel(server)
    rng = np.random.default_rng(4)
    basis = rng.standard_normal((1024, 1024)).astype(np.float32) / 32
    channel.request(HeadGram(gram=basis @ basis.T))
    outcome = refusal(channel, synthetic_generation_upload(1, 512, 28, 1024, seed=5))
    channel.request(synthetic_generation_upload(2, 16, 28, 1024, seed=6))
    began = time.process_time()
    channel.request(FetchWeights())
    first = time.process_time() - began
    began = time.process_time()
    for _ in range(8):
        channel.request(FetchWeights())
    result = {"outcome_512_positions": outcome, "fetch_cpu_seconds_first": round(first, 3),
              "fetch_cpu_seconds_next_8": round(time.process_time() - began, 3),
              "memory_reserved_bytes": limits.memory_pool.reserved,
              "memory_quota_bytes": int(limits.max_device_memory_mib * MIB)}
    server.close()
    return result


def checkpoint_writes(root: Path) -> dict:
    """One sample at 16 layers × 1024, then TrainUntil(50): bytes written with checkpoints by time
    (default 300 s) and after every epoch, side by side."""
    result = {}
    for name, seconds in (("by_time", ServerLimits().checkpoint_seconds), ("every_epoch", 1e-9)):
        server = SideTuningServer(root / name, ServerTraining(), limits=ServerLimits(checkpoint_seconds=seconds))
        channel = InProcessChannel(server)
        channel.request(synthetic_upload(1, 16, 1024, seed=7))
        before = written_bytes()
        channel.request(TrainUntil(epochs_total=50))
        server.close()
        result[f"written_bytes_{name}"] = written_bytes() - before
    result["ratio_every_epoch_vs_by_time"] = round(
        result["written_bytes_every_epoch"] / result["written_bytes_by_time"], 1)
    return result


def wide_gram(root: Path) -> dict:
    """A Gram matrix wider than --max-width, ×5."""
    server = GenerationServer(root, limits=ServerLimits())
    channel = InProcessChannel(server)
    outcomes = {refusal(channel, HeadGram(gram=np.eye(4097, dtype=np.float32))) for _ in range(5)}
    result = {"outcomes": sorted(outcomes), "transcript_bytes": transcript_bytes(root)}
    server.close()
    return result


def one_sample_first(root: Path) -> dict:
    """A first upload of one sample, then more samples, training and a fetch."""
    server = SideTuningServer(root, limits=ServerLimits())
    channel = InProcessChannel(server)
    channel.request(synthetic_upload(1, 30, 576, seed=8))
    channel.request(synthetic_upload(64, 30, 576, seed=9))
    report = channel.request(TrainUntil(epochs_total=5))
    weights = channel.request(FetchWeights())
    result = {"loss": report.loss, "weights_finite": all(bool(np.isfinite(v).all()) for v in weights.state.values())}
    server.close()
    return result


def main() -> None:
    """Run every attack in its own work directory; print the figures as JSON."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        attacks = {name: run(Path(tmp) / name) for name, run in
                # First, so that the process's peak RSS (a high-water mark) is not raised by another attack yet.
                (("network_beyond_a_frame", network_beyond_a_frame), ("resent_and_refused", resent_and_refused),
                 ("generation_sample_size", generation_sample_size), ("checkpoint_writes", checkpoint_writes),
                 ("wide_gram", wide_gram), ("one_sample_first", one_sample_first))}
    print(json.dumps({"attacks": attacks, "seconds": round(time.perf_counter() - began, 1)}, indent=2))


if __name__ == "__main__":
    main()
