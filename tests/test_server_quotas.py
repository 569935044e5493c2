"""Storage and memory quotas of the server (README "Server limits"): what one device can make the
server store on disk, hold in memory, record or rewrite is bounded in bytes, whatever the mode.

In process against the real endpoints, with quotas scaled down so each bound is reached in a few
requests; the last test runs the same attacks (`protocol.transport.abuse`) against `serve` over TLS."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import protocol.modes.generation.server as generation_server
import protocol.server.trainer as trainer_module
from protocol.errors import ProtocolError
from protocol.model.side_network import SideNetworkShape
from protocol.modes.generation.messages import HeadGram
from protocol.modes.generation.server import GenerationServer
from protocol.server.limits import MIB, ServerLimits
from protocol.server.quotas import directory_bytes, weights_bytes
from protocol.server.recovery import TRAINING_STATE_FILE
from protocol.server.side_tuning import SideTuningServer
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import TRANSCRIPT_FILE, ServerView
from protocol.transport.abuse import QUOTA_ATTACKS, run_quota_attack, synthetic_generation_upload, synthetic_upload
from protocol.transport.identity import KeyDirectory
from protocol.transport.serve_process import ServeProcess
from protocol.wire.channel import InProcessChannel
from protocol.wire.messages import FetchWeights, RecordedDigest, SideWeights, TrainUntil, Upload, UploadAck

TRAINING = ServerTraining(rank=4)


def transcript_bytes(workdir: Path) -> int:
    return (workdir / TRANSCRIPT_FILE).stat().st_size


def test_other_values_for_cached_ids_and_other_layer_counts_leave_no_record(tmp_path: Path) -> None:
    """Re-sending cached ids with other values, or another layer count, is refused before
    anything is recorded (it used to be recorded in full each time)."""
    server = SideTuningServer(tmp_path, TRAINING, limits=ServerLimits())
    channel = InProcessChannel(server)
    upload = synthetic_upload(64, 2, 64, seed=1)
    assert channel.request(upload) == UploadAck(stored=64, duplicates=0)
    before = transcript_bytes(tmp_path)
    other_values = Upload(sample_ids=upload.sample_ids, activations=upload.activations + 1, delta=upload.delta,
                          layers=upload.layers)
    for _ in range(4):
        with pytest.raises(ProtocolError, match="other values"):
            channel.request(other_values)
        with pytest.raises(ProtocolError, match="differ from earlier uploads"):
            channel.request(synthetic_upload(64, 3, 64, seed=2))
    assert transcript_bytes(tmp_path) == before and len(server.cache) == 64
    server.close()


def test_a_repeated_weights_reply_is_recorded_once(tmp_path: Path) -> None:
    """FetchWeights asked again with nothing trained in between records the reply's digest,
    not another full copy; the view still holds the reply in full once, and sizes as sent."""
    server = SideTuningServer(tmp_path, TRAINING, limits=ServerLimits())
    channel = InProcessChannel(server)
    channel.request(synthetic_upload(8, 2, 64, seed=3))
    first = channel.request(FetchWeights())
    after_first = transcript_bytes(tmp_path)
    replies = [channel.request(FetchWeights()) for _ in range(16)]
    reply_bytes = weights_bytes(server.network.shape)
    assert transcript_bytes(tmp_path) - after_first < 16 * 1024 < reply_bytes * 16 // 4  # digests, not copies
    for reply in replies:
        np.testing.assert_array_equal(reply.state["down"], first.state["down"])
    records = [r for r in ServerView(tmp_path).messages() if r.direction == 1]
    assert sum(isinstance(r.message, SideWeights) for r in records) == 1
    digests = [r for r in records if isinstance(r.message, RecordedDigest)]
    assert len(digests) == 16 and all(r.message.outcome == "repeated" and r.size > 1024 for r in digests)
    channel.request(TrainUntil(epochs_total=2))  # the network changed: the next reply is recorded in full
    channel.request(FetchWeights())
    assert sum(isinstance(r.message, SideWeights) for r in ServerView(tmp_path).messages()) == 2
    server.close()


def test_requests_refused_inside_the_role_or_undecodable_are_recorded_by_digest(tmp_path: Path) -> None:
    """What the role refuses after admission (and what does not decode) is kept as kind,
    digest and size, never as a full copy."""
    server = SideTuningServer(tmp_path, TRAINING, limits=ServerLimits())
    server.handle_bytes(b"\x00" * 200_000)
    with pytest.raises(ProtocolError, match="nothing to train on"):
        InProcessChannel(server).request(TrainUntil(epochs_total=2))
    assert transcript_bytes(tmp_path) < 2048
    kinds = [(r.message.kind, r.message.outcome, r.size) for r in ServerView(tmp_path).messages()
             if isinstance(r.message, RecordedDigest)]
    assert kinds[0] == ("undecodable", "refused", 200_000) and kinds[1][:2] == ("train_until", "refused")
    server.close()


def test_a_network_whose_weights_reply_exceeds_the_frame_limit_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """The first upload fixes the network; if its weights could never be sent within a
    frame, the upload is refused (naming --max-frame-mib), nothing is built or written."""
    limits = ServerLimits(max_frame_mib=1.0)
    server = SideTuningServer(tmp_path, ServerTraining(rank=64), limits=limits)
    channel = InProcessChannel(server)
    too_wide = synthetic_upload(1, 8, 512, seed=4)  # 2·8·512·64 adapter weights: 2 MiB of reply
    assert weights_bytes(SideNetworkShape(8, 512, 64, 2)) > MIB
    with pytest.raises(ProtocolError, match="--max-frame-mib"):
        channel.request(too_wide)
    assert server.network is None and len(server.cache) == 0 and transcript_bytes(tmp_path) == 0
    assert not (tmp_path / TRAINING_STATE_FILE).exists()
    assert channel.request(synthetic_upload(1, 2, 512, seed=5)).stored == 1  # 0.5 MiB of reply fits
    assert isinstance(channel.request(FetchWeights()), SideWeights)
    server.close()


def test_the_memory_held_for_a_device_is_bounded_per_device_and_server_wide(tmp_path: Path) -> None:
    """A device's network, optimizer, reply and cached samples are reserved against its
    memory quota and the server-wide budget; a closed device gives its share back."""
    limits = ServerLimits(max_device_memory_mib=1.0, max_server_memory_mib=1.2)
    first = SideTuningServer(tmp_path / "a", TRAINING, limits=limits)
    channel = InProcessChannel(first)
    with pytest.raises(ProtocolError, match="--max-device-memory-mib"):
        channel.request(synthetic_upload(1, 8, 4096, seed=6))  # 7 copies of 1.3 MiB of weights
    assert first.network is None and transcript_bytes(tmp_path / "a") == 0
    channel.request(synthetic_upload(64, 2, 512, seed=7))
    held = limits.memory_pool.reserved
    assert 0.5 * MIB < held <= MIB
    second = SideTuningServer(tmp_path / "b", TRAINING, limits=limits)
    with pytest.raises(ProtocolError, match="--max-server-memory-mib"):
        InProcessChannel(second).request(synthetic_upload(64, 2, 512, seed=8))
    assert second.network is None and limits.memory_pool.reserved == held
    first.close()
    assert InProcessChannel(second).request(synthetic_upload(64, 2, 512, seed=8)).stored == 64
    second.close()
    assert limits.memory_pool.reserved == 0


def test_the_disk_a_device_uses_is_bounded_by_its_quota(tmp_path: Path) -> None:
    """Cache, transcript and checkpoints together stay within --max-device-disk-mib;
    the upload that would pass it is refused and changes nothing."""
    limits = ServerLimits(max_device_disk_mib=2.0)
    server = SideTuningServer(tmp_path, TRAINING, limits=limits)
    channel = InProcessChannel(server)
    stored, refused = 0, None
    for seed in range(40):
        try:
            stored += channel.request(synthetic_upload(64, 2, 512, seed=100 + seed)).stored  # 128 KiB each
        except ProtocolError as exc:
            refused = str(exc)
            break
    assert refused is not None and "--max-device-disk-mib" in refused and stored >= 64
    used = directory_bytes(tmp_path)
    assert used <= 2 * MIB
    with pytest.raises(ProtocolError, match="--max-device-disk-mib"):
        channel.request(synthetic_upload(64, 2, 512, seed=99))
    assert directory_bytes(tmp_path) == used and len(server.cache) == stored
    server.close()


def test_generation_uploads_are_bounded_per_sample(tmp_path: Path) -> None:
    """Positions per sample and bytes per sample are limits of their own (a sample count
    says nothing of a sample's size), checked before anything is stored."""
    limits = ServerLimits(max_positions_per_sample=16, max_sample_kib=64.0)
    server = GenerationServer(tmp_path, TRAINING, limits=limits)
    channel = InProcessChannel(server)
    channel.request(HeadGram(gram=np.eye(64, dtype=np.float32)))
    before = transcript_bytes(tmp_path)
    with pytest.raises(ProtocolError, match="--max-positions-per-sample"):
        channel.request(synthetic_generation_upload(1, 17, 2, 64))
    with pytest.raises(ProtocolError, match="--max-sample-kib"):
        channel.request(synthetic_generation_upload(1, 16, 32, 64))  # 16·(32·64·2 + 64·4) bytes: 68 KiB
    assert transcript_bytes(tmp_path) == before and len(server.cache) == 0
    assert channel.request(synthetic_generation_upload(2, 16, 2, 64)).stored == 2
    server.close()


def test_generation_fetches_decompose_the_gram_matrix_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """G^{-1/2} is computed once per server, not per weights request (it is seconds of CPU
    at large widths); repeated fetches return the same weights."""
    calls = []
    real = generation_server.inverse_square_root
    monkeypatch.setattr(generation_server, "inverse_square_root", lambda gram: calls.append(1) or real(gram))
    server = GenerationServer(tmp_path, TRAINING, limits=ServerLimits())
    channel = InProcessChannel(server)
    rng = np.random.default_rng(9)
    basis = rng.standard_normal((32, 32)).astype(np.float32)
    channel.request(HeadGram(gram=basis @ basis.T))
    channel.request(synthetic_generation_upload(4, 3, 2, 32, seed=10))
    replies = [channel.request(FetchWeights()) for _ in range(5)]
    channel.request(TrainUntil(epochs_total=3))
    replies.append(channel.request(FetchWeights()))
    assert len(calls) == 1
    np.testing.assert_allclose(replies[0].state["head.weight"], replies[4].state["head.weight"], rtol=0, atol=0)
    server.close()


def test_checkpoints_are_written_by_time_and_resume_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached epochs do not rewrite the checkpoint each epoch (only when --checkpoint-seconds
    have passed, and once at a clean stop); a crash resumes from the older checkpoint to exactly the
    weights of an uninterrupted run."""
    written = []
    real = trainer_module.write_atomic
    monkeypatch.setattr(trainer_module, "write_atomic",
                        lambda path, data: written.append(len(data)) or real(path, data))
    upload = synthetic_upload(16, 2, 32, seed=11)

    def trained(workdir: Path, limits: ServerLimits, epochs: int, close: bool = True) -> SideTuningServer:
        server = SideTuningServer(workdir, TRAINING, limits=limits)
        channel = InProcessChannel(server)
        channel.request(upload)
        channel.request(TrainUntil(epochs_total=epochs))
        if close:
            server.close()
        return server

    reference = trained(tmp_path / "every-epoch", ServerLimits(checkpoint_seconds=1e-9), 30)
    per_epoch = len(written)
    written.clear()
    crashed = trained(tmp_path / "by-time", ServerLimits(checkpoint_seconds=3600.0), 30, close=False)
    assert len(written) == 2 and per_epoch >= 2 * 29  # the new network's checkpoint (two files), no epoch's
    resumed = SideTuningServer(tmp_path / "by-time", TRAINING, limits=ServerLimits(checkpoint_seconds=3600.0))
    assert resumed.epochs_done == 0  # nothing of the 29 cached epochs reached the disk before the "crash"
    InProcessChannel(resumed).request(TrainUntil(epochs_total=30))
    for name, value in reference.network.state_dict().items():
        torch.testing.assert_close(resumed.network.state_dict()[name], value, rtol=0, atol=0)
    written.clear()
    resumed.close()  # a clean stop writes the last state once
    assert len(written) == 2
    crashed.cache.close()
    crashed.transcript.close()


def test_a_one_sample_first_upload_or_a_constant_feature_does_not_poison_the_network(tmp_path: Path) -> None:
    """The standardisation fitted on a first upload of one sample (no spread at all) or with
    a feature held constant keeps every weight finite through training and later uploads."""
    server = SideTuningServer(tmp_path / "one", TRAINING, limits=ServerLimits())
    channel = InProcessChannel(server)
    channel.request(synthetic_upload(1, 2, 16, seed=12))
    channel.request(synthetic_upload(8, 2, 16, seed=13))
    channel.request(TrainUntil(epochs_total=3))
    for name, value in channel.request(FetchWeights()).state.items():
        assert np.isfinite(value).all(), name
    server.close()

    constant = synthetic_upload(8, 2, 16, seed=14)
    constant.activations[:, :, 3] = 5.0
    later = synthetic_upload(8, 2, 16, seed=15)
    later.activations[:, :, 3] = 6e4  # far from the first upload's constant
    server = SideTuningServer(tmp_path / "constant", TRAINING, limits=ServerLimits())
    channel = InProcessChannel(server)
    channel.request(constant)
    channel.request(later)
    report = channel.request(TrainUntil(epochs_total=3))
    assert np.isfinite(report.loss)
    assert all(np.isfinite(value).all() for value in channel.request(FetchWeights()).state.values())
    server.close()


def test_a_gram_matrix_wider_than_the_limit_leaves_no_record(tmp_path: Path) -> None:
    """A refused Gram matrix (wider than --max-width) is not recorded, however often it is sent."""
    server = GenerationServer(tmp_path, TRAINING, limits=ServerLimits(max_width=64))
    channel = InProcessChannel(server)
    for _ in range(5):
        with pytest.raises(ProtocolError, match="max_width=64"):
            channel.request(HeadGram(gram=np.eye(65, dtype=np.float32)))
    assert transcript_bytes(tmp_path) == 0
    server.close()


def test_the_quota_attacks_against_serve_stop_at_their_limits(tmp_path: Path) -> None:
    """Rows 1, 2, 5, 12, 14 over TLS with a valid device certificate: each quota attack of
    `protocol.transport.abuse` is answered as in process, the refusals are logged, and no device's
    directory passes its disk quota."""
    keys = KeyDirectory(tmp_path / "keys")
    keys.init([kind.replace("_", "-") for kind in QUOTA_ATTACKS])
    flags = ["--rank", "4", "--max-layers", "2", "--max-width", "64", "--max-device-disk-mib", "4"]
    expected = {"resend_other_values": "other values", "fetch_repeat": "answered side_weights",
                "disk_fill": "max_device_disk_mib", "one_sample_first": "answered side_weights",
                "gram_too_wide": "max_width", "generation_positions": "max_positions_per_sample"}
    with ServeProcess(tmp_path, keys, flags) as serve:
        for kind, outcome in expected.items():
            seen: Counter = Counter()
            for round_number in range(1, 40):
                run_quota_attack(kind, serve.address, keys, seen, round_number, 64)
                if outcome in seen:
                    break
            assert outcome in seen, (kind, seen)
        log = serve.log()
    assert "--max-device-disk-mib" in log and "other values" in log
    for device in (serve.workdir / "devices").iterdir():
        assert directory_bytes(device) <= 4 * MIB, device.name
