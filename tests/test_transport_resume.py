"""A device process that dies mid-upload resumes where it stopped: same sample ids,
acknowledged batches are neither re-forwarded nor re-sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.wire.channel import InProcessChannel
from protocol.device.forward_device import DeviceRole
from protocol.errors import UserInputError
from protocol.server.training_settings import ServerTraining
from protocol.server.side_tuning import SideTuningServer
from protocol.data.tasks import SST2, builtin_split, sample
from protocol.wire.messages import Upload
from protocol.server.transcript import ServerView
from secure_assist.training.upload import upload_resumable


class DeviceCrash(Exception):
    """Stands for the device process being killed."""


def test_restarted_device_skips_acknowledged_batches(tiny_llama, tmp_path: Path) -> None:
    examples = sample(builtin_split("sst2", "train"), 40, 0)
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    channel = InProcessChannel(server)
    device_dir = tmp_path / "device"

    def crash_after_three(acknowledged: int) -> None:
        if acknowledged == 3:
            raise DeviceCrash

    first = DeviceRole(tiny_llama, SST2, batch_size=8, progress=False)
    with pytest.raises(DeviceCrash):
        upload_resumable(first, channel, examples, device_dir, "run", on_acknowledged=crash_after_three)
    assert first.forward_samples == 24

    second = DeviceRole(tiny_llama, SST2, batch_size=8, progress=False)
    ids = upload_resumable(second, channel, examples, device_dir, "run")
    assert second.forward_samples == 16  # only the two batches never acknowledged
    server.close()
    view = ServerView(tmp_path / "server")
    uploads = view.received(Upload)
    assert len(uploads) == 5
    cached = view.cache_contents()[0]
    assert len(cached) == 40 and {bytes(i) for i in cached} == {bytes(i) for i in ids}

    with pytest.raises(UserInputError, match="different run"):
        upload_resumable(second, channel, examples, device_dir, "another-run")
