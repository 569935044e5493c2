"""Seconds from launching `secure-assist serve` to listening (its ready file written), and whether
torch was loaded by then (prints JSON).

    python benchmarks/serve_startup.py                       # this checkout, 3 runs
    python benchmarks/serve_startup.py --checkout ../other   # another checkout of the project
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def time_to_listen(checkout: Path, root: Path) -> dict[str, object]:
    """One cold start of `serve` from `checkout`: seconds until listening, torch loaded or not."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cli = [sys.executable, "-c", "from secure_assist.cli import main; main()"]
    subprocess.run([*cli, "keys", "init", "--dir", str(root / "keys")], env=env, cwd=checkout, check=True,
                   capture_output=True)
    ready = root / "ready"
    began = time.perf_counter()
    server = subprocess.Popen([*cli, "serve", "--keys", str(root / "keys"), "--workdir", str(root / "state"),
                               "--port", "0", "--ready-file", str(ready)], env=env, cwd=checkout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready.exists():
            if server.poll() is not None:
                raise RuntimeError(f"serve from {checkout} exited with {server.returncode}")
            time.sleep(0.01)
        seconds = time.perf_counter() - began
        torch_loaded = "libtorch" in Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        server.wait()
    return {"seconds_to_listen": round(seconds, 3), "torch_loaded_when_listening": torch_loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPOSITORY, help="checkout to start serve from")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as root:
            runs.append(time_to_listen(args.checkout.resolve(), Path(root)))
    print(json.dumps({"runs": runs, "load_average": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
