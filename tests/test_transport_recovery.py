"""Fault tolerance: the `serve` process is SIGKILLed during epoch 1 and again during a cached
epoch, restarted on the same port, and the device's run completes with every sample cached
exactly once and a side network bit-identical to an uninterrupted run's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from protocol.server.cache import ActivationCache
from protocol.wire.codec import decode
from protocol.server.recovery import TRAINING_STATE_FILE
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import CACHE_FILE, SIDE_NETWORK_FILE
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.serve_process import ServeProcess
from protocol.transport.server import TransportServer
from secure_assist.config import FinetuneConfig
from protocol.modes.host import host_factory
from secure_assist.training.run import run_training
from secure_assist.training.safeguard import VALIDATION_SHARE, validation_count

TRAIN, EPOCHS, BATCH = 384, 40, 8
TRAINING = ServerTraining(rank=16, checkpoint_every_uploads=8)


def config(workdir: Path) -> FinetuneConfig:
    return FinetuneConfig(model="tiny-llama", train_samples=TRAIN, eval_samples=64, epochs=EPOCHS,
                          device_batch_size=BATCH, workdir=str(workdir))


def epochs_in_checkpoint(path: Path) -> int:
    try:
        with safe_open(str(path), "np") as handle:
            return int(handle.metadata()["epochs_done"])
    except (OSError, KeyError, ValueError, Exception):  # mid-replace or not written yet
        return 0


def side_network(workdir: Path) -> dict[str, np.ndarray]:
    return decode((workdir / SIDE_NETWORK_FILE).read_bytes())[0]


def test_server_killed_in_epoch_1_and_epoch_2_resumes_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["faulty", "reference"])

    # Reference: the same run, never interrupted (in-process server, same training settings).
    transport = TransportServer(tmp_path / "reference-server", keys, TRAINING, endpoint_factory=host_factory())
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("reference")
        reference = run_training(config(tmp_path / "reference-device"),
                                 NetworkChannel(*running.address, context, pinned), progress=False).to_json()
    reference_dir = transport.workdir(next(fp for fp, e in keys.load_trust().items() if e["name"] == "reference"))

    # Checkpoints after (nearly) every epoch, so the kills find mid-training progress on disk.
    serve = ServeProcess(tmp_path, keys, ["--rank", str(TRAINING.rank), "--checkpoint-seconds", "0.001"])
    serve.start()
    faulty_fp = next(fp for fp, e in keys.load_trust().items() if e["name"] == "faulty")
    faulty_dir = tmp_path / "server" / "devices" / faulty_fp
    kills: list[str] = []

    def kill_in_epoch_1(acknowledged: int) -> None:
        if acknowledged == 13 and not kills:  # mid-epoch 1, a few ms into the next upload
            def crash() -> None:
                serve.kill()
                kills.append(f"epoch 1 after {acknowledged} uploads")
                serve.start()
            threading.Timer(0.005, crash).start()

    def kill_in_cached_epochs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(kills) == 1 and 2 <= epochs_in_checkpoint(faulty_dir / TRAINING_STATE_FILE) < EPOCHS - 5:
                serve.kill()
                kills.append("cached epochs")
                serve.start()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_in_cached_epochs, daemon=True)
    watcher.start()
    try:
        context, pinned = keys.device_context("faulty")
        channel = NetworkChannel("127.0.0.1", serve.port, context, pinned, reconnect_seconds=180)
        result = run_training(config(tmp_path / "faulty-device"), channel, progress=False,
                              on_acknowledged=kill_in_epoch_1).to_json()
    finally:
        watcher.join(timeout=5)
        serve.stop()

    assert len(kills) == 2, kills
    assert channel.reconnects >= 2
    # The restarted servers resumed from disk with partial progress.
    assert "work directory open" in serve.log(2) and "work directory open" in serve.log(3)
    resumed_epoch = int(serve.log(3).split("cached samples, ")[1].split(" epochs")[0])
    assert 2 <= resumed_epoch < EPOCHS
    # Every sample in the cache exactly once.
    cache = ActivationCache(faulty_dir / CACHE_FILE)
    ids = cache.load_all()[0]
    cache.close()
    truth = (tmp_path / "faulty-device" / "device" / "ground_truth.jsonl").read_text().splitlines()
    expected = {line.split('"sample_id": "')[1][:32] for line in truth}
    # The device uploads what its safeguard does not hold out.
    assert len(ids) == TRAIN - validation_count(TRAIN, VALIDATION_SHARE) and {bytes(i).hex() for i in ids} == expected
    # Exactly the uninterrupted run: same φ bit for bit, hence the same accuracy.
    reference_net, faulty_net = side_network(reference_dir), side_network(faulty_dir)
    assert reference_net.keys() == faulty_net.keys()
    for name in reference_net:
        np.testing.assert_array_equal(reference_net[name], faulty_net[name], err_msg=name)
    assert result["accuracy"] == reference["accuracy"]
    assert result["epochs_done"] == reference["epochs_done"] == EPOCHS
