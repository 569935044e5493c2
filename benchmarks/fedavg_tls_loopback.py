"""Federated averaging deployed on loopback over TLS: a SuperLink, three SuperNodes, `flwr run` (prints JSON).

Makes a CA and a server certificate for 127.0.0.1/localhost (`cryptography`) and a Flower
configuration (FLWR_HOME) whose SuperLink connection `loopback` trusts that CA, starts
`flower-superlink` with the certificate, one `flower-supernode` per device (verifying the
SuperLink against the CA; each names its device's work directory), then runs
`run_fedavg(..., superlink="loopback")`: the devices' forward passes, the rounds through
`flwr run`, every device's deployment. Prints the commands it ran and the result; stops the
processes it started.

    python benchmarks/fedavg_tls_loopback.py --output runs/fedavg-tls
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secure_assist.config import FinetuneConfig
from secure_assist.federated.run import run_fedavg
from secure_assist.federated.settings import FedAvgSettings

DEVICES = 3
PORT = 9710  # the SuperLink's HTTP APIs; SuperNode i serves its ClientApp on PORT + 1 + i


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
                ca: bool) -> x509.Certificate:
    """A certificate for `key`, signed by `signer` (the CA's, or a server's for 127.0.0.1/localhost)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_certificates(folder: Path) -> dict[str, Path]:
    """ca.crt, server.pem and server.key (0600) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secure-assist loopback CA")])
    ca = certificate("secure-assist loopback CA", ca_key, ca_name, ca_key, ca=True)
    server = certificate("localhost", server_key, ca_name, ca_key, ca=False)
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/fedavg-tls")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--train-samples", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--variant", default="plain")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.output).resolve()
    certs = write_certificates(root / "certificates")
    home = root / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                      f'address = "127.0.0.1:{PORT}"\nroot-certificates = "{certs["ca"]}"\n')
    bin_dir = Path(sys.executable).parent
    # The SuperLink and SuperNodes start Flower's other executables (flower-superexec, flwr-serverapp) by name.
    os.environ.update(FLWR_HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env = dict(os.environ)
    base = FinetuneConfig(model=args.model, train_samples=args.train_samples, eval_samples=args.eval_samples,
                          devices=DEVICES, partition="iid")
    configs = [replace(base, device_index=i, workdir=str(root / f"device_{i}")) for i in range(DEVICES)]
    commands = [[str(bin_dir / "flower-superlink"), "--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile",
                 str(certs["cert"]), "--ssl-keyfile", str(certs["key"]), "--port", str(PORT),
                 "--database", str(root / "superlink.db")]]
    commands += [[str(bin_dir / "flower-supernode"), "--superlink", f"127.0.0.1:{PORT}", "--root-certificates",
                  str(certs["ca"]), "--port", str(PORT + 1 + i), "--node-config", f'device-workdir="{c.workdir}"']
                 for i, c in enumerate(configs)]
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    processes = []
    try:
        for i, command in enumerate(commands):
            processes.append(subprocess.Popen(command, env=env, stdout=open(logs / f"process_{i}.log", "wb"),
                                              stderr=subprocess.STDOUT))
            time.sleep(3 if i == 0 else 0.5)  # the SuperLink listens before SuperNodes dial it
        start = time.perf_counter()
        outcome = run_fedavg(configs, FedAvgSettings(variant=args.variant, rounds=args.rounds), progress=False,
                             updates_dir=root / "server", overwrite=True, superlink="loopback")
        wall = time.perf_counter() - start
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    print(json.dumps({
        "commands": [shlex.join(c) for c in commands] + [f"FLWR_HOME={home} flwr run secure_assist/federated/app "
                                                         "loopback --stream --run-config '...'"],
        "variant": args.variant, "rounds": args.rounds, "devices": DEVICES, "model": args.model,
        "wall_seconds": wall, "rounds_seconds": outcome.details["simulation_seconds"],
        "server_seconds": outcome.server_seconds,
        "accuracy": [s.metrics["accuracy"] for s in outcome.summaries],
        "zero_shot_accuracy": [s.metrics.get("zero_shot_accuracy") for s in outcome.summaries],
        "final_train_loss": [s.final_train_loss for s in outcome.summaries],
        "safeguard": [(s.safeguard or {}).get("action") for s in outcome.summaries],
        "bytes_up_per_round": [s.details["fedavg_bytes_up_per_round"] for s in outcome.summaries],
    }, indent=1))


if __name__ == "__main__":
    main()
