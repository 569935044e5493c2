"""Abuse benchmark of `secure-assist serve` (prints JSON; under 10 minutes).

Honest tiny-llama devices (real pivot activations and Δ of SST-2 samples, computed once) upload
and train against a real `serve` process (TLS 1.3, mutual auth, loopback) while abusive clients,
each an allow-listed device or an anonymous peer, run every attack the server limits answer in a loop
(`protocol.transport.abuse`). The same honest workload runs against a fresh `serve` with no
abuse, alternating rounds in one run so that both conditions see the same machine load.
Reported: honest requests completed, their p50/p99 latency (p99 by request type too), the server's
peak RSS (VmHWM: the process's high-water mark, not a sample) and CPU seconds, abused vs clean;
samples lost; SIGTERM stop time (mid-training, abusers still running); what the attacks got back;
whether every file of the server's state is private; and 50,000+ damaged frames covering every
registered message type through the server's decoding path.

    python benchmarks/transport_abuse.py            # 16 devices, 2 rounds, 51,000 fuzz frames
    python benchmarks/transport_abuse.py --quick    # 4 devices, 1 round, 3,400 fuzz frames
    python benchmarks/transport_abuse.py --attacks stalled_handshakes,half_sent_frames  # some attacks only
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch

from protocol.model.backbone import load_backbone
from protocol.server.cache import ActivationCache
from protocol.device.forward_device import DeviceRole, new_sample_ids
from protocol.errors import ProtocolError
from protocol.server.limits import MIB, ServerLimits
from protocol.wire.messages import FetchWeights, TrainUntil, Upload, encode_message
from protocol.server.quotas import directory_bytes
from protocol.data.tasks import SST2, builtin_split, sample
from protocol.server.transcript import CACHE_FILE, TRANSCRIPT_FILE
from protocol.transport.abuse import ATTACKS, synthetic_upload
from protocol.transport.client import NetworkChannel
from protocol.transport.fuzz import EXAMPLES, hostile_frames, server_verdict
from protocol.transport.identity import KeyDirectory
from protocol.transport.serve_process import ServeProcess
from transport_load import timed_threads  # sibling script: python puts benchmarks/ on sys.path

# Both servers: the defaults, except the exact tiny-llama shape and budgets sized for this scale, as an
# operator would: 64 MiB of partial frames of at most 16 MiB (defaults: 256 and 64), 32 TLS handshakes in
# progress for the ~40 identities here (default 64; each holds ~0.7 MiB), 4 MiB of disk per device.
FRAME_MIB = "16"
DISK_MIB = "4"  # per device (honest devices here store under 1 MiB): the disk-filling attacker reaches it
SERVE_FLAGS = ["--max-layers", "2", "--max-width", "64", "--max-classes", "2", "--max-frame-mib", FRAME_MIB,
               "--max-partial-frames-mib", "64", "--read-seconds", "5", "--max-device-disk-mib", DISK_MIB,
               "--max-handshakes", "32"]
DESCRIPTORS = 1024  # a common default; the flood opens about this many connections
EPOCHS, LONG_RUN_EPOCHS = 10, 1000


def prepare_uploads(devices: int, samples: int, batch: int) -> list[list[Upload]]:
    """Each honest device's uploads: tiny-llama pivots and Δ of its own SST-2 samples."""
    torch.set_num_threads(1)
    role = DeviceRole(load_backbone("tiny-llama", device=torch.device("cpu")), SST2, batch_size=batch, progress=False)
    examples = sample(builtin_split("sst2", "train"), devices * samples, 0)
    uploads = []
    for d in range(devices):
        mine = examples[d * samples:(d + 1) * samples]
        chunks = [mine[i:i + batch] for i in range(0, samples, batch)]
        uploads.append([role.make_upload(c, role.forward([e.text for e in c]), new_sample_ids(len(c))) for c in chunks])
    return uploads


def honest_device(serve: ServeProcess, keys: KeyDirectory, name: str, uploads: list[Upload],
                  latencies: list[tuple[str, float]], outcomes: Counter) -> None:
    """Upload every batch, train to EPOCHS, fetch φ; time each request (with its type)."""
    context, pinned = keys.device_context(name)
    channel = NetworkChannel(*serve.address, context, pinned, reconnect_seconds=60.0, mode="side_network")
    for message in [*uploads, TrainUntil(epochs_total=EPOCHS), FetchWeights()]:
        began = time.perf_counter()
        try:
            channel.request(message)
        except ProtocolError as exc:
            outcomes[f"failed: {str(exc)[:80]}"] += 1
            continue
        latencies.append((message.TYPE, time.perf_counter() - began))
        outcomes["completed"] += 1
    channel.close()


class Abusers:
    """The abuser process, at lower CPU priority: the attackers' own work (building and encrypting
    their frames) would be done on their own machines, not on the server's."""

    def __init__(self, address: tuple[str, int], keys: KeyDirectory, attacks: tuple[str, ...]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "protocol.transport.abuse", "--target", "%s:%d" % address, "--keys",
             str(keys.root), "--frame-mib", FRAME_MIB, "--flood", str(DESCRIPTORS), "--attacks", ",".join(attacks)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(10))
        if self.process.stdout.readline().strip() != "ready":  # every attack has run at least once
            raise RuntimeError("the abuser process did not start")

    def snapshot(self) -> None:
        """Fix the counts to report."""
        self.process.stdin.write("snapshot\n")
        self.process.stdin.flush()

    def finish(self) -> dict:
        """Stop the attacks; what they got back."""
        out, _ = self.process.communicate(timeout=120)
        return json.loads(out)


def namespace(serve: ServeProcess, keys: KeyDirectory, name: str) -> Path:
    """The work directory of device `name` on this server."""
    return serve.workdir / "devices" / next(fp for fp, e in keys.load_trust().items() if e["name"] == name)


def run_phase(root: Path, keys: KeyDirectory, uploads: list[list[Upload]], attacks: tuple[str, ...]) -> dict:
    """One server, the honest workload, beside `attacks` (none: the clean run); then a SIGTERM mid-training."""
    root.mkdir()
    serve = ServeProcess(root, keys, SERVE_FLAGS, nofile=DESCRIPTORS).start()
    abusers = None
    latencies: list[tuple[str, float]] = []
    outcomes: Counter = Counter()
    try:
        long_run = NetworkChannel(*serve.address, *keys.device_context("long-run"), mode="side_network")
        for upload in uploads[0]:
            long_run.request(Upload(sample_ids=new_sample_ids(len(upload.sample_ids)), activations=upload.activations,
                                    delta=upload.delta, layers=upload.layers))
        if attacks:
            abusers = Abusers(serve.address, keys, attacks)  # returns once every attack is under way
        honest = [threading.Thread(target=honest_device, args=(serve, keys, f"device{i:02d}", mine, latencies, outcomes))
                  for i, mine in enumerate(uploads)]
        seconds = timed_threads(honest)
        trainer = threading.Thread(target=quietly, args=(long_run.request, TrainUntil(epochs_total=LONG_RUN_EPOCHS)),
                                   daemon=True)
        trainer.start()
        time.sleep(2.0)  # cached epochs under way (checkpoints are by time now): SIGTERM lands mid-training
        rss = serve.peak_rss()
        cpu = psutil.Process(serve.process.pid).cpu_times()
        if abusers is not None:
            abusers.snapshot()
        stop_seconds = serve.stop(timeout=30.0)
    finally:
        attacks = abusers.finish() if abusers is not None else {}
        serve.kill()
    return {"honest_seconds": seconds, "latencies": latencies, "outcomes": outcomes, "peak_rss": rss,
            "server_cpu_seconds": cpu.user + cpu.system,
            "stop_seconds": stop_seconds, "stop_rc": serve.process.returncode,
            "samples_lost": samples_lost(serve, keys, uploads), "state_private": state_private(serve.workdir),
            "attacks": attacks, "disk": disk_use(serve),
            "resend_transcript_bytes": resend_growth(serve, keys) if "resend" in attacks else None}


def quietly(call: Callable, message: object) -> None:
    """A request cut short by the stop under test."""
    try:
        call(message)
    except ProtocolError:
        pass


def samples_lost(serve: ServeProcess, keys: KeyDirectory, uploads: list[list[Upload]]) -> int:
    """Honest samples acknowledged but missing from their device's cache."""
    lost = 0
    for i, mine in enumerate(uploads):
        cache = ActivationCache(namespace(serve, keys, f"device{i:02d}") / CACHE_FILE)
        stored = {bytes(row) for row in cache.load_all()[0]}
        cache.close()
        lost += sum(bytes(row) not in stored for upload in mine for row in upload.sample_ids)
    return lost


def disk_use(serve: ServeProcess) -> dict[str, int]:
    """Bytes of every device's state together, against the sum of their disk quotas."""
    devices = [path for path in (serve.workdir / "devices").iterdir() if path.is_dir()]
    return {"bytes": sum(directory_bytes(path) for path in devices),
            "quota_sum_bytes": len(devices) * int(float(DISK_MIB) * MIB)}


def state_private(root: Path) -> bool:
    """Whether every directory of the server's state is 0700 and every file 0600."""
    return all(stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600) for p in [root, *root.rglob("*")])


def resend_growth(serve: ServeProcess, keys: KeyDirectory) -> dict[str, int]:
    """Transcript bytes of the re-sending attacker: one full upload, then a digest record per re-send."""
    transcript = namespace(serve, keys, "resend") / TRANSCRIPT_FILE
    return {"transcript_bytes": transcript.stat().st_size if transcript.exists() else 0,
            "upload_bytes": len(encode_message(synthetic_upload(4096, 2, 64, seed=3)))}


def fuzz(frames: int) -> dict:
    """Damaged frames of every registered type through the server's decoding path."""
    limits, verdicts, errors = ServerLimits(max_frame_mib=16), Counter(), Counter()
    began = time.perf_counter()
    for name, frame in hostile_frames(np.random.default_rng(2024), frames, limits.max_frame_bytes):
        try:
            verdicts[server_verdict(frame, limits)] += 1
        except Exception as exc:  # noqa: BLE001 - counted: each would have been a request without an error reply
            errors[f"{name}: {type(exc).__name__}"] += 1
    return {"frames": frames, "message_types": len(EXAMPLES), "frames_per_type": frames // len(EXAMPLES),
            **verdicts, "non_protocol_errors": sum(errors.values()), "errors": dict(errors),
            "seconds": round(time.perf_counter() - began, 1)}


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile of latencies in seconds, in milliseconds."""
    return round(float(np.percentile(values, q)) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--samples", type=int, default=128, help="samples per honest device")
    parser.add_argument("--batch", type=int, default=8, help="samples per upload")
    parser.add_argument("--rounds", type=int, default=2, help="clean + abused pairs, alternated")
    parser.add_argument("--fuzz-frames", type=int, default=51_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--attacks", type=lambda text: tuple(text.split(",")), default=ATTACKS,
                        help="comma-separated attacks of the abused rounds (default: every one)")
    args = parser.parse_args()
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    if args.quick:
        args.devices, args.rounds, args.fuzz_frames = 4, 1, 3_400
    began = time.perf_counter()
    uploads = prepare_uploads(args.devices, args.samples, args.batch)
    phases: dict[str, list[dict]] = {"clean": [], "abused": []}
    with tempfile.TemporaryDirectory() as tmp:
        keys = KeyDirectory(Path(tmp) / "keys")
        keys.init([f"device{i:02d}" for i in range(args.devices)] + ["long-run"]
                  + [kind.replace("_", "-") for kind in ATTACKS])
        for index in range(2 * args.rounds):
            condition = ("clean", "abused")[index % 2]
            attacks = args.attacks if condition == "abused" else ()
            phases[condition].append(run_phase(Path(tmp) / f"phase{index}", keys, uploads, attacks))
    fuzzing = fuzz(args.fuzz_frames)
    expected = args.devices * (len(uploads[0]) + 2)
    summary = {}
    for condition, runs in phases.items():
        timed = [x for run in runs for x in run["latencies"]]
        latencies = [seconds for _, seconds in timed]
        summary[condition] = {
            "honest_requests_completed": [run["outcomes"]["completed"] for run in runs],
            "honest_requests_expected": expected,
            "failures": [dict((k, v) for k, v in run["outcomes"].items() if k != "completed") for run in runs],
            "latency_p50_ms": percentile_ms(latencies, 50), "latency_p99_ms": percentile_ms(latencies, 99),
            "latency_p99_ms_by_request": {kind: percentile_ms([s for k, s in timed if k == kind], 99)
                                          for kind in dict.fromkeys(k for k, _ in timed)},
            "honest_seconds": [round(run["honest_seconds"], 2) for run in runs],
            # Its work from start to SIGTERM: the honest devices', the long run's, and the attacks'.
            "server_cpu_seconds": [round(run["server_cpu_seconds"], 1) for run in runs],
            "peak_rss_mib": [round(run["peak_rss"] / MIB) for run in runs],
            "samples_lost": sum(run["samples_lost"] for run in runs),
            "sigterm_stop_seconds": [None if run["stop_seconds"] is None else round(run["stop_seconds"], 2)
                                     for run in runs],
            "sigterm_exit_codes": [run["stop_rc"] for run in runs],
            "state_private": all(run["state_private"] for run in runs),
            "disk_mib": [round(run["disk"]["bytes"] / MIB, 1) for run in runs],
            "disk_quota_sum_mib": [round(run["disk"]["quota_sum_bytes"] / MIB) for run in runs],
        }
    clean, abused = summary["clean"], summary["abused"]
    print(json.dumps({
        "honest_devices": args.devices, "samples_per_device": args.samples, "upload_batch": args.batch,
        "epochs": EPOCHS, "rounds": args.rounds, "serve_flags": SERVE_FLAGS, "descriptor_limit": DESCRIPTORS,
        "attacks_run": list(args.attacks),
        "clean": clean, "abused": abused,
        "p99_ratio_abused_vs_clean": round(abused["latency_p99_ms"] / clean["latency_p99_ms"], 2),
        "p50_ratio_abused_vs_clean": round(abused["latency_p50_ms"] / clean["latency_p50_ms"], 2),
        "peak_rss_ratio_abused_vs_clean": round(max(abused["peak_rss_mib"]) / max(clean["peak_rss_mib"]), 2),
        "attacks": [run["attacks"] for run in phases["abused"]],
        "resend": [run["resend_transcript_bytes"] for run in phases["abused"]],
        "fuzz": fuzzing, "cpu_cores": os.cpu_count(), "seconds": round(time.perf_counter() - began, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
