"""Pooled PAE over TLS: five tiny-llama devices in one pool against a real `serve` on loopback train
the same side network as the in-process pool (which runs its devices in the reverse order), and
`serve` refuses a device of another pool, an unknown pool and a revoked member, whose samples leave
the pool's later training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError
from protocol.modes.pooled.directory import POOLS_DIR
from protocol.modes.pooled.pool import TRAINED_DIR
from protocol.server.transcript import SIDE_NETWORK_FILE, ServerView
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.serve_process import ServeProcess
from protocol.wire.codec import decode
from protocol.wire.messages import FetchWeights, Hello, SideWeights, TrainReport, TrainUntil, Upload, expect
from secure_assist.config import FinetuneConfig
from secure_assist.devices.pooled_run import member_name, pooled_configs, run_members, run_pooled

DEVICES = 5
BASE = FinetuneConfig(model="tiny-llama", train_samples=100, eval_samples=16, epochs=2, rank=4, devices=DEVICES,
                      mechanism_seed=0, safeguard_fraction=0.2)


def weights(path: Path) -> dict[str, np.ndarray]:
    arrays, _ = decode(path.read_bytes())
    return arrays


def test_five_devices_over_tls_train_the_in_process_pool(tiny_llama, tmp_path: Path) -> None:
    configs = [replace(BASE, device_index=i, workdir=str(tmp_path / "remote" / f"d{i}")) for i in range(DEVICES)]
    keys = KeyDirectory(tmp_path / "keys")
    keys.init([])
    for config in configs:
        keys.add_device(member_name(config), pools=("clinics",))
    keys.add_device("outsider", pools=("labs",))
    # A quorum of 4 of the 5 members: the pool still has its quorum once one member is revoked below.
    with ServeProcess(tmp_path, keys, ["--pool", "clinics:4", "--pool", "labs:1", "--rank", "4"]) as serve:
        channels = [NetworkChannel(*serve.address, *keys.device_context(member_name(c))) for c in configs]
        remote = run_members(pooled_configs(configs, "clinics"), channels, progress=False)
        served = weights(serve.workdir / POOLS_DIR / "clinics" / TRAINED_DIR / SIDE_NETWORK_FILE)

        # Refused before anything is stored: a device of another pool, and a pool the server does not host.
        for pool, reason in (("clinics", "may not join pool 'clinics'"), ("nowhere", "hosts no pool 'nowhere'")):
            outsider = NetworkChannel(*serve.address, *keys.device_context("outsider"))
            with pytest.raises(ProtocolError, match=reason):
                outsider.request(Hello(mode="pooled", pool=pool))
            outsider.close()
        assert not (serve.workdir / "devices" / keys.device_context("outsider")[1]).exists()

        # Revoking a member: its connections are refused, and the pool's next training leaves its samples out.
        keys.revoke(member_name(configs[-1]))
        with pytest.raises(ProtocolError, match="revoked"):
            channels[-1].request(FetchWeights())
        retrained = expect(channels[0].request(TrainUntil(epochs_total=BASE.epochs)), TrainReport)
        without = expect(channels[0].request(FetchWeights()), SideWeights).state
        for channel in channels:
            channel.close()
    local_configs = [replace(c, workdir=str(tmp_path / "local" / f"d{c.device_index}")) for c in configs]
    local = run_pooled(local_configs[::-1], progress=False, pool_dir=tmp_path / "local" / "server")

    pooled = sum(s.n_train for s in remote)
    assert all(s.mode == "pooled" and s.cache_samples == pooled for s in remote)
    in_process = weights(Path(local.details["side_network"]))
    assert served.keys() == in_process.keys()
    for key in served:
        np.testing.assert_allclose(served[key], in_process[key], rtol=1e-5, atol=1e-6, err_msg=key)
    by_index = {s.config["device_index"]: s for s in local.summaries}
    for summary in remote:
        twin = by_index[summary.config["device_index"]]
        assert summary.n_train == twin.n_train and summary.safeguard["factor"] == twin.safeguard["factor"]
        assert summary.metrics["accuracy"] == pytest.approx(twin.metrics["accuracy"], abs=1 / 16 + 1e-9)
    # Each device's server view is its own namespace: its own uploads only, and the φ it was served.
    for summary in local.summaries:
        view = ServerView(summary.server_view)
        assert view.mode() == "pooled" and sum(len(u.sample_ids) for u in view.received(Upload)) == summary.n_train
        assert (Path(summary.server_view) / SIDE_NETWORK_FILE).read_bytes() == \
            Path(local.details["side_network"]).read_bytes()

    assert retrained.samples == pooled - remote[-1].n_train
    assert not np.allclose(without["head.weight"], served["head.weight"])
