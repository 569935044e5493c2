"""PAE device + server over the in-process channel, with a tiny backbone."""

import numpy as np
import pytest

from protocol.wire.channel import InProcessChannel
from protocol.device.forward_device import DeviceRole
from protocol.errors import ProtocolError
from protocol.wire.messages import (
    FetchWeights, ResentUpload, SideWeights, TrainReport, TrainUntil, Upload, UploadAck,
    encode_message, expect,
)
from protocol.server.recovery import load_optimizer_arrays, optimizer_arrays
from protocol.server.training_settings import ServerTraining
from protocol.server.side_tuning import SideTuningServer
from protocol.server.trainer import cosine_factor
from protocol.model.side_network import network_from_arrays
from protocol.data.tasks import SST2, builtin_split, sample
from protocol.server.transcript import INBOUND, OUTBOUND, ServerView
from attacks.base import hex_ids
from attacks.labels import DeltaArgmax
from attacks.view_data import pivot_data


@pytest.fixture()
def examples():
    return sample(builtin_split("sst2", "dev"), 48, 0)


def test_epochs_after_the_first_need_no_device_work(tmp_path, tiny_llama, examples) -> None:
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    channel = InProcessChannel(server)
    device = DeviceRole(tiny_llama, SST2, batch_size=16, progress=False)
    ids = device.upload(channel, examples)
    forwards, bytes_up = device.forward_samples, channel.bytes_up
    report = expect(channel.request(TrainUntil(epochs_total=4)), TrainReport)
    assert (report.epochs_done, report.samples) == (4, 48)
    assert device.forward_samples == forwards == 48
    assert channel.bytes_up - bytes_up == len(encode_message(TrainUntil(epochs_total=4)))
    cached_ids, acts, delta = ServerView(tmp_path / "server").cache_contents()
    np.testing.assert_array_equal(cached_ids, ids)
    assert acts.shape == (48, 2, 64) and delta.shape == (48, 2)
    np.testing.assert_allclose(delta.sum(axis=1), 0, atol=1e-6)
    server.close()


def test_bytes_are_those_of_the_serialized_messages(tmp_path, tiny_llama, examples) -> None:
    server = SideTuningServer(tmp_path / "server")
    channel = InProcessChannel(server)
    device = DeviceRole(tiny_llama, SST2, batch_size=16, progress=False)
    device.upload(channel, examples)
    server.close()
    records = list(ServerView(tmp_path / "server").messages())
    assert sum(r.size for r in records if r.direction == INBOUND) == channel.bytes_up
    assert sum(r.size for r in records if r.direction == OUTBOUND) == channel.bytes_down
    uploads = [r.message for r in records if isinstance(r.message, Upload)]
    assert len(uploads) == 3 and all(u.activations.dtype == np.float16 for u in uploads)
    assert all(isinstance(r.message, UploadAck) for r in records if r.direction == OUTBOUND)


def test_every_uploaded_sample_is_in_the_view_the_attacks_read(tmp_path, tiny_llama, examples) -> None:
    # The attacks read the transcript, not the cache: every upload after the first must be recorded
    # in full (ids, activations, Δ), or the audit would attack a shrunken view and under-report.
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    channel = InProcessChannel(server)
    device = DeviceRole(tiny_llama, SST2, batch_size=16, progress=False)
    ids = device.upload(channel, examples)
    server.close()
    view = ServerView(tmp_path / "server")
    assert not view.received(ResentUpload) and len(view.received(Upload)) == 3
    data = pivot_data(view, DeltaArgmax(), need_delta=True)
    assert data.sample_ids == hex_ids(ids)
    cached_ids, acts, delta = view.cache_contents()
    np.testing.assert_array_equal(cached_ids, ids)
    np.testing.assert_array_equal(data.activations, acts.astype(np.float32))
    np.testing.assert_array_equal(data.delta, delta)


def test_resent_uploads_are_counted_not_stored_twice(tmp_path, tiny_llama, examples) -> None:
    server = SideTuningServer(tmp_path / "server")
    channel = InProcessChannel(server)
    device = DeviceRole(tiny_llama, SST2, progress=False)
    upload = device.make_upload(examples[:4], device.forward([e.text for e in examples[:4]]),
                                np.repeat(np.arange(4, dtype=np.uint8)[:, None], 16, axis=1))
    assert expect(channel.request(upload), UploadAck) == UploadAck(stored=4, duplicates=0)
    assert expect(channel.request(upload), UploadAck) == UploadAck(stored=0, duplicates=4)
    assert len(server.cache) == 4
    server.close()


def test_restart_restores_side_network_and_cache(tmp_path, tiny_llama, examples) -> None:
    device = DeviceRole(tiny_llama, SST2, progress=False)
    first = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    channel = InProcessChannel(first)
    device.upload(channel, examples)
    channel.request(TrainUntil(epochs_total=3))
    before = expect(channel.request(FetchWeights()), SideWeights)
    first.close()
    second = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    after = expect(InProcessChannel(second).request(FetchWeights()), SideWeights)
    assert second.epochs_done == 3 and len(second.cache) == 48
    for name, value in before.state.items():
        np.testing.assert_array_equal(after.state[name], value)
    network_from_arrays(after.state, after.architecture)
    second.close()


def test_protocol_violations_are_answered_with_errors(tmp_path, tiny_llama, examples) -> None:
    server = SideTuningServer(tmp_path / "server")
    channel = InProcessChannel(server)
    with pytest.raises(ProtocolError, match="no upload"):
        channel.request(TrainUntil(epochs_total=2))
    with pytest.raises(ProtocolError, match="does not accept"):
        channel.request(UploadAck(stored=1, duplicates=0))
    with pytest.raises(ProtocolError, match="transcript record, never a request"):
        channel.request(ResentUpload(sample_ids=np.zeros((1, 16), np.uint8), sha256="0" * 64, wire_bytes=10**9))
    assert not any(isinstance(r.message, ResentUpload) for r in ServerView(tmp_path / "server").messages())
    device = DeviceRole(tiny_llama, SST2, progress=False)
    device.upload(channel, examples[:4])
    narrow = DeviceRole(tiny_llama, SST2, layers=(2,), progress=False)
    with pytest.raises(ProtocolError, match="differ from earlier uploads"):
        narrow.upload(channel, examples[4:8])
    assert len(server.cache) == 4
    server.close()


def test_cosine_schedule_runs_from_the_full_rate_to_zero() -> None:
    factors = [cosine_factor(e / 4, 5) for e in range(0, 21)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(factors, factors[1:]))


def test_adapters_learn_at_their_scaled_rate_and_cached_epochs_decay(tmp_path, tiny_llama, examples) -> None:
    training = ServerTraining(rank=4, learning_rate=1e-2, adapter_lr_scale=0.1)
    server = SideTuningServer(tmp_path / "server", training)
    channel = InProcessChannel(server)
    DeviceRole(tiny_llama, SST2, progress=False).upload(channel, examples)
    head_group, adapter_group = server.trainer.optimizer.param_groups
    assert {id(p) for p in adapter_group["params"]} == {id(server.network.down), id(server.network.up)}
    assert (head_group["lr"], adapter_group["lr"]) == (pytest.approx(1e-2), pytest.approx(1e-3))
    seen = []
    original = server.trainer.step
    server.trainer.step = lambda *args: seen.append(head_group["lr"]) or original(*args)
    channel.request(TrainUntil(epochs_total=4))
    # 48 samples in batches of 32: two steps per cached epoch, over a 4-epoch horizon.
    assert seen == pytest.approx([1e-2 * cosine_factor(e, 4) for e in (1, 1.5, 2, 2.5, 3, 3.5)])
    server.close()


def test_optimizer_state_of_another_layout_is_refused(tmp_path, tiny_llama, examples) -> None:
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    channel = InProcessChannel(server)
    DeviceRole(tiny_llama, SST2, progress=False).upload(channel, examples)
    saved = optimizer_arrays(server.trainer.optimizer)
    swapped = {k.replace("optimizer.1.", "optimizer.x.").replace("optimizer.3.", "optimizer.1.")
               .replace("optimizer.x.", "optimizer.3."): v for k, v in saved.items()}
    with pytest.raises(ProtocolError, match="does not fit"):
        load_optimizer_arrays(server.trainer.optimizer, swapped)
    server.close()


def test_without_cosine_decay_the_rate_stays_constant(tmp_path, tiny_llama, examples) -> None:
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4, cosine_decay=False))
    channel = InProcessChannel(server)
    DeviceRole(tiny_llama, SST2, progress=False).upload(channel, examples)
    seen = []
    original = server.trainer.step
    server.trainer.step = lambda *args: seen.append(server.trainer.optimizer.param_groups[0]["lr"]) or original(*args)
    channel.request(TrainUntil(epochs_total=3))
    assert seen == [ServerTraining.learning_rate] * 4
    server.close()
