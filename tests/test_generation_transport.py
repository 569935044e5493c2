"""The generation mode over TLS: `serve` hosts it beside the classification modes, and a device's
run gives the same model as in process (tiny-llama, a few Alpaca rows)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.model.model_io import load_finetuned
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ServerView
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from protocol.modes.host import host_factory
from secure_assist.training.run import run_training
from tests.generation_data import alpaca_file


def test_generation_over_tls_equals_the_in_process_run(tiny_llama, tmp_path: Path) -> None:
    config = FinetuneConfig(model="tiny-llama", task="generation", train_file=str(alpaca_file(tmp_path, 30)),
                            train_samples=20, eval_samples=4, epochs=2, rank=4, max_answer_tokens=4, rouge_samples=2,
                            safeguard_fraction=0.0)
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["alice"])
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory())
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("alice")
        remote = run_training(replace(config, workdir=str(tmp_path / "remote")),
                              NetworkChannel(*running.address, context, pinned), progress=False).to_json()
    local = run_finetune(replace(config, workdir=str(tmp_path / "local")), progress=False)
    assert remote["mode"] == local.mode == "generation"
    assert remote["eval_answer_nll"] == local.metrics["eval_answer_nll"] and remote["n_train"] == local.n_train == 20
    remote_side = load_finetuned(tmp_path / "remote" / "model.safetensors").side_network
    local_side = load_finetuned(tmp_path / "local" / "model.safetensors").side_network
    np.testing.assert_array_equal(remote_side.head.weight.detach().numpy(), local_side.head.weight.detach().numpy())
    view = ServerView(transport.workdir(next(iter(keys.load_trust()))))
    assert view.mode() == "generation" and len(view.received(HeadGram)) == 1
    assert sum(len(m.sample_ids) for m in view.received(GenerationUpload)) == 20
