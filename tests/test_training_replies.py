"""A training request is answered within `--train-reply-seconds` (at an epoch boundary) and the device asks again for
the epochs left, on the same schedule: a long training never outlasts the device's wait for one reply
(`--request-timeout`), and the model is the one a single request would have trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError
from protocol.model.model_io import load_finetuned
from protocol.modes.host import host_factory
from protocol.modes.side_network.mode import SideNetworkMode
from protocol.server.limits import ServerLimits
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import OUTBOUND, ServerView
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from protocol.wire.messages import Message, TrainReport, TrainUntil
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.training.run import run_training

CONFIG = FinetuneConfig(model="tiny-llama", train_samples=40, eval_samples=16, epochs=4, rank=4, mechanism_seed=0,
                        safeguard_fraction=0.0)


def test_training_replies_epoch_by_epoch_and_gives_the_single_requests_model(tiny_llama, tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["alice"])
    # Every reply is due at once: the server answers after each epoch.
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory(),
                                limits=ServerLimits(train_reply_seconds=1e-6))
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("alice")
        remote = run_training(replace(CONFIG, workdir=str(tmp_path / "remote")),
                              NetworkChannel(*running.address, context, pinned), progress=False).to_json()
    local = run_finetune(replace(CONFIG, workdir=str(tmp_path / "local")), progress=False).to_json()
    view = ServerView(transport.workdir(next(iter(keys.load_trust()))))
    assert [m.epochs_total for m in view.received(TrainUntil)] == [4, 4, 4]
    assert [r.message.epochs_done for r in view.messages()
            if r.direction == OUTBOUND and isinstance(r.message, TrainReport)] == [2, 3, 4]
    assert remote["epochs_done"] == local["epochs_done"] == 4
    assert remote["final_train_loss"] == pytest.approx(local["final_train_loss"], rel=1e-6)
    remote_state = load_finetuned(remote["model_file"]).side_network.state_dict()
    for name, expected in load_finetuned(local["model_file"]).side_network.state_dict().items():
        np.testing.assert_array_equal(remote_state[name].numpy(), expected.numpy(), err_msg=name)


class _StalledServer:
    """A server whose training reports stop short of the epochs asked for, and stay there."""

    def __init__(self, epochs_done: list[int]) -> None:
        self.replies = iter(epochs_done)

    def request(self, message: Message) -> Message:
        assert isinstance(message, TrainUntil)
        return TrainReport(epochs_done=next(self.replies), samples=8, loss=0.5)


def test_a_server_whose_training_stops_progressing_is_refused() -> None:
    with pytest.raises(ProtocolError, match="stopped at 3 of 5 epochs"):
        SideNetworkMode().training_report(_StalledServer([2, 3, 3]), 5)
    assert SideNetworkMode().training_report(_StalledServer([2, 4, 5]), 5).epochs_done == 5
