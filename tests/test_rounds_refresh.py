"""A boosting round's refreshed targets (`RefreshedTargets`): the server pairs them with the states the device
uploaded in round 1 and carries them out as that upload; what a device can make it pair, read and hold is bounded
(samples of its own round 1 only, each once per message, the upload they stand for within a frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError
from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.modes.host import ModeHost
from protocol.server.cache import ActivationCache
from protocol.server.limits import ServerLimits
from protocol.server.side_tuning import SideTuningServer
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ServerView
from protocol.transport.abuse import synthetic_upload
from protocol.wire.channel import InProcessChannel
from protocol.wire.messages import (
    Hello, RefreshedTargets, TrainUntil, Upload, decode_message, encode_message, refreshed_targets,
)

TRAINING = ServerTraining(rank=4)


def _refresh(upload: Upload, seed: int) -> RefreshedTargets:
    """`upload`'s samples with other targets."""
    targets = np.random.default_rng(seed).standard_normal(upload.delta.shape).astype(np.float32)
    return RefreshedTargets(sample_ids=upload.sample_ids, counts=np.ones(len(upload.sample_ids), np.int64),
                            targets=targets)


def _round_one(tmp_path: Path, limits: ServerLimits | None = None,
               uploads: int = 2) -> tuple[ModeHost, InProcessChannel, list[Upload]]:
    """A host whose device uploaded `uploads` batches of 16 samples in round 1 and trained them."""
    host = ModeHost(tmp_path, ("side_network",), TRAINING, limits=limits)
    channel = InProcessChannel(host)
    channel.request(Hello(mode="side_network"))
    sent = [synthetic_upload(16, 2, 64, seed=seed) for seed in range(uploads)]
    for upload in sent:
        channel.request(upload)
    channel.request(TrainUntil(epochs_total=2))
    return host, channel, sent


def test_a_round_pairs_refreshed_targets_with_round_ones_states(tmp_path: Path) -> None:
    host, channel, sent = _round_one(tmp_path)
    channel.request(Hello(mode="side_network", round=2))
    refreshes = [_refresh(upload, seed=10 + i) for i, upload in enumerate(sent)]
    assert [channel.request(refresh).stored for refresh in refreshes] == [16, 16]
    assert channel.request(refreshes[0]).duplicates == 16  # sent again with the same values: idempotent
    channel.request(TrainUntil(epochs_total=2))
    host.close()
    recorded = ServerView(tmp_path / "round2").received(Upload)  # what the round's server knows, as an upload
    assert len(recorded) == 2 and ServerView(tmp_path / "round2").received(RefreshedTargets) == []
    for upload, refresh, stood_for in zip(sent, refreshes, recorded):
        np.testing.assert_array_equal(stood_for.sample_ids, upload.sample_ids)
        np.testing.assert_array_equal(stood_for.activations, upload.activations)
        np.testing.assert_array_equal(stood_for.delta, refresh.targets)
        assert stood_for.layers == upload.layers
    # Round 1's state is untouched: its view holds the first targets.
    np.testing.assert_array_equal(ServerView(tmp_path).received(Upload)[0].delta, sent[0].delta)


def test_refreshed_targets_outside_a_later_round_are_refused(tmp_path: Path) -> None:
    upload = synthetic_upload(4, 2, 8, seed=1)
    server = SideTuningServer(tmp_path, TRAINING)
    channel = InProcessChannel(server)
    channel.request(upload)
    with pytest.raises(ProtocolError, match="belong to a boosting round >= 2"):
        channel.request(_refresh(upload, seed=2))
    server.close()
    # A round whose round 1 holds nothing to pair with.
    host = ModeHost(tmp_path / "empty", ("side_network",), TRAINING)
    channel = InProcessChannel(host)
    channel.request(Hello(mode="side_network", round=2))
    with pytest.raises(ProtocolError, match="round 1 holds no trained uploads"):
        channel.request(_refresh(upload, seed=2))
    host.close()


def test_only_the_devices_own_round_one_samples_can_be_refreshed(tmp_path: Path) -> None:
    host, channel, sent = _round_one(tmp_path / "alice")
    other = synthetic_upload(16, 2, 64, seed=99)  # samples round 1 never received (another device's, say)
    channel.request(Hello(mode="side_network", round=2))
    mixed = _refresh(sent[0], seed=3)
    mixed = RefreshedTargets(sample_ids=np.concatenate([mixed.sample_ids[:8], other.sample_ids[:8]]),
                             counts=mixed.counts, targets=mixed.targets)
    with pytest.raises(ProtocolError, match="8 of 16 refreshed samples were not uploaded in round 1"):
        channel.request(mixed)
    with pytest.raises(ProtocolError, match="classification targets are one row per sample"):
        channel.request(RefreshedTargets(sample_ids=sent[0].sample_ids[:2], counts=np.array([1, 2], np.int64),
                                         targets=np.zeros((3, 2), np.float32)))
    with pytest.raises(ProtocolError, match="inconsistent shapes"):  # the upload it stands for is checked too
        channel.request(RefreshedTargets(sample_ids=sent[0].sample_ids[:2], counts=np.ones(2, np.int64),
                                         targets=np.zeros((2, 0), np.float32)))
    assert len(host.endpoint.cache) == 0  # refused: nothing stored, nothing recorded
    host.close()
    assert ServerView(tmp_path / "alice" / "round2").received(Upload) == []


def test_a_sample_is_refreshed_once_per_message() -> None:
    upload = synthetic_upload(2, 2, 8, seed=4)
    twice = RefreshedTargets(sample_ids=upload.sample_ids[[0, 0]], counts=np.ones(2, np.int64),
                             targets=np.zeros((2, 2), np.float32))
    with pytest.raises(ProtocolError, match="sample_ids repeat"):
        decode_message(encode_message(twice))


def test_the_upload_refreshed_targets_stand_for_must_fit_in_a_frame(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Round 1's uploads of 16 samples (2 × 64 float16 states each: 4 KiB of states) fit a 32 KiB frame one by
    # one; refreshing all 128 samples in one message would stand for an upload of 32 KiB of states.
    limits = ServerLimits(max_frame_mib=32 / 1024)
    host, channel, sent = _round_one(tmp_path, limits, uploads=8)
    channel.request(Hello(mode="side_network", round=2))
    together = RefreshedTargets(sample_ids=np.concatenate([u.sample_ids for u in sent]),
                                counts=np.ones(128, np.int64), targets=np.zeros((128, 2), np.float32))
    assert len(encode_message(together)) < limits.max_frame_bytes  # the message itself is small
    read, states = [], ActivationCache.states
    monkeypatch.setattr(ActivationCache, "states", lambda cache, ids: read.append(len(ids)) or states(cache, ids))
    with pytest.raises(ProtocolError, match="max_frame_mib"):
        channel.request(together)
    assert read == []  # refused before a state was read
    assert channel.request(_refresh(sent[0], seed=5)).stored == 16  # one upload's worth at a time fits
    host.close()


def test_generation_refreshes_give_each_sample_its_round_one_positions(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    width, counts = 8, np.array([3, 1, 2], np.int64)
    gram = rng.standard_normal((width, width)).astype(np.float32)
    upload = GenerationUpload(sample_ids=rng.integers(0, 256, (3, 16), dtype=np.uint8), counts=counts,
                              activations=rng.standard_normal((6, 2, width)).astype(np.float16),
                              residual=rng.standard_normal((6, width)).astype(np.float32), layers=(1, 2))
    host = ModeHost(tmp_path, ("generation",), TRAINING)
    channel = InProcessChannel(host)
    channel.request(Hello(mode="generation"))
    channel.request(HeadGram(gram=gram @ gram.T))
    channel.request(upload)
    channel.request(Hello(mode="generation", round=2))
    channel.request(HeadGram(gram=gram @ gram.T))
    with pytest.raises(ProtocolError, match="the loss positions it had in round 1"):
        channel.request(RefreshedTargets(sample_ids=upload.sample_ids, counts=np.array([1, 3, 2], np.int64),
                                         targets=np.zeros((6, width), np.float32)))
    refresh = refreshed_targets(GenerationUpload(sample_ids=upload.sample_ids, counts=counts,
                                                 activations=upload.activations, residual=upload.residual + 1,
                                                 layers=upload.layers))
    assert channel.request(refresh).stored == 3
    host.close()
    stood_for = ServerView(tmp_path / "round2").received(GenerationUpload)[0]
    np.testing.assert_array_equal(stood_for.activations, upload.activations)
    np.testing.assert_array_equal(stood_for.residual, upload.residual + 1)
    np.testing.assert_array_equal(stood_for.counts, counts)
