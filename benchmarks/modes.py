"""Training modes side by side on one setting: what the server buys, and HE over the network.

Phases (each a separate CLI process, so each device's peak RSS is its own):
  pae_tls       `secure-assist device` (side_network) against a `secure-assist serve` process
  device_local  `secure-assist finetune --mode device_local` (the same side network on the device)
  he_tls        `secure-assist device --mechanism he_ckks` (ckks_ridge) against the same server
  he_local      `secure-assist finetune --mechanism he_ckks` in one process (same seeds and data)
Phases reuse the device's forward cache (`--reuse-forwards`; the seconds of a reused pass are
the ones measured when it was computed) unless --fresh-forwards. Each phase's summary is kept as <workdir>/<phase>.json (a rerun skips finished phases unless
--fresh); the printed JSON holds every summary's key numbers and the comparisons: device_local
vs PAE (accuracy, device seconds, peak RSS), HE over TLS vs in process (accuracy), HE bytes on
the wire vs PAE's.

    python benchmarks/modes.py --workdir runs/modes                 # SmolLM2-135M, 2,000 / full dev
    python benchmarks/modes.py --workdir runs/modes_smoke --model tiny-llama --train-samples 64 --eval-samples 32
    python benchmarks/modes.py --workdir runs/modes_raw --phases he_tls,he_local --safeguard-fraction 0
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocol.transport.identity import KeyDirectory

PHASES = ("pae_tls", "device_local", "he_tls", "he_local")
KEYS = ("mode", "accuracy", "zero_shot_accuracy", "n_train", "n_eval", "bytes_up", "bytes_down", "device_seconds",
        "device_train_seconds", "device_peak_rss_mib", "epochs_done", "safeguard", "he_fit_reply_bytes",
        "he_ciphertext_bytes_per_sample", "he_public_context_bytes")


def start_server(workdir: Path, keys: KeyDirectory) -> tuple[subprocess.Popen, str]:
    """A real `secure-assist serve` process on a free loopback port."""
    ready = workdir / "server.ready"
    ready.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "secure_assist.cli", "serve", "--keys", str(keys.root),
                                "--workdir", str(workdir / "server"), "--port", "0", "--ready-file", str(ready)],
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "serve.log", "wb"))
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {(workdir / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return process, ready.read_text().strip()


def phase_command(phase: str, args: argparse.Namespace, address: str | None, keys: KeyDirectory) -> list[str]:
    common = ["--model", args.model, "--train-samples", str(args.train_samples), "--epochs", str(args.epochs),
              "--seed", str(args.seed), "--mechanism-seed", str(args.seed), "--workdir",
              str(args.workdir / phase), "--overwrite", "--quiet"]
    if args.eval_samples:
        common += ["--eval-samples", str(args.eval_samples)]
    if not args.fresh_forwards:
        common += ["--reuse-forwards"]
    if args.safeguard_fraction is not None:
        common += ["--safeguard-fraction", str(args.safeguard_fraction)]
    he = ["--mechanism", "he_ckks"] if phase.startswith("he_") else []
    if phase.endswith("_tls"):
        # A loaded machine can take longer than the default 600 s to train 19 cached epochs.
        return [sys.executable, "-m", "secure_assist.cli", "device", "--server", address, "--keys", str(keys.root),
                "--name", phase, "--request-timeout", "3600", *common, *he]
    mode = ["--mode", "device_local"] if phase == "device_local" else []
    return [sys.executable, "-m", "secure_assist.cli", "finetune", *common, *mode, *he]


def run_phase(phase: str, args: argparse.Namespace, address: str | None, keys: KeyDirectory) -> dict:
    started = time.perf_counter()
    result = subprocess.run(phase_command(phase, args, address, keys), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{phase} failed ({result.returncode}): {result.stderr[-3000:]}")
    summary = json.loads(result.stdout)
    summary["process_wall_seconds"] = time.perf_counter() - started
    (args.workdir / f"{phase}.json").write_text(json.dumps(summary, indent=1))
    return summary


def compare(done: dict[str, dict]) -> dict:
    """The comparisons the acceptance asks for, from whichever phases are done."""
    out: dict[str, object] = {}
    pae, local, he_tls, he_local = (done.get(p) for p in PHASES)
    if pae and local:
        out["device_local_minus_pae_accuracy"] = local["accuracy"] - pae["accuracy"]
        out["device_local_extra_device_seconds"] = local["device_seconds"] - pae["device_seconds"]
        out["device_local_train_seconds"] = local["device_train_seconds"]
        out["device_local_peak_rss_over_pae_device"] = local["device_peak_rss_mib"] / pae["device_peak_rss_mib"]
    if he_tls and he_local:
        out["he_tls_minus_in_process_accuracy"] = he_tls["accuracy"] - he_local["accuracy"]
    if he_tls and pae:
        out["he_over_pae_wire_bytes"] = ((he_tls["bytes_up"] + he_tls["bytes_down"])
                                         / (pae["bytes_up"] + pae["bytes_down"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the full dev split")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--fresh", action="store_true", help="recompute phases already saved in --workdir")
    parser.add_argument("--fresh-forwards", action="store_true",
                        help="run the backbone in every phase instead of reusing the device's forward cache "
                             "(reused passes are counted with the seconds measured when they were computed)")
    parser.add_argument("--safeguard-fraction", type=float, default=None,
                        help="the device's validation share in every phase (default: each mode's own; 0 deploys the "
                             "raw head, e.g. to compare HE over TLS with HE in process on the whole training set)")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"error: unknown phase(s) {unknown}; choose from {PHASES}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    keys = KeyDirectory(args.workdir / "keys")
    if not keys.trust_file.exists():
        keys.init([p for p in PHASES if p.endswith("_tls")])
    done = {p: json.loads((args.workdir / f"{p}.json").read_text()) for p in PHASES
            if (args.workdir / f"{p}.json").is_file() and not (args.fresh and p in phases)}
    todo = [p for p in phases if p not in done]
    server, address = (start_server(args.workdir, keys) if any(p.endswith("_tls") for p in todo) else (None, None))
    try:
        for phase in todo:
            print(f"{phase} ...", file=sys.stderr, flush=True)
            done[phase] = run_phase(phase, args, address, keys)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print(json.dumps({"setting": {"model": args.model, "train_samples": args.train_samples,
                                  "eval_samples": args.eval_samples or "full dev", "epochs": args.epochs,
                                  "seed": args.seed, "cpu_threads": os.cpu_count(),
                                  "safeguard_fraction": args.safeguard_fraction or "each mode's default"},
                      "phases": {p: {k: s.get(k) for k in KEYS + ("process_wall_seconds",)} for p, s in done.items()},
                      "comparisons": compare(done)}, indent=1))


if __name__ == "__main__":
    main()
