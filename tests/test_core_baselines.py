"""MobiLLM-style and local LoRA baselines on a tiny backbone."""

import torch

from secure_assist.references.local_lora import LoraSettings, run_local_lora
from secure_assist.references.mobillm import run_mobillm
from protocol.wire.channel import InProcessChannel
from protocol.device.forward_device import DeviceRole
from protocol.server.side_tuning import SideTuningServer
from protocol.data.tasks import SST2, builtin_split, sample


def test_mobillm_uploads_far_more_than_pae(tmp_path, tiny_llama) -> None:
    train = sample(builtin_split("sst2", "dev"), 32, 0)
    run = run_mobillm(tiny_llama, SST2, train, train[:8], tmp_path / "mobillm", epochs=2, progress=False)
    assert run.device_forward_samples == 64 and len(run.bytes_up_per_epoch) == 2
    assert run.probabilities.shape == (8, 2)
    server = SideTuningServer(tmp_path / "pae")
    channel = InProcessChannel(server)
    DeviceRole(tiny_llama, SST2, progress=False).upload(channel, train)
    server.close()
    # Every token instead of the pivot: at least ~the prompt length (>= 6 tokens) times more.
    assert run.bytes_up_per_epoch[0] > 6 * channel.bytes_up


def test_local_lora_trains_and_restores_the_backbone(tiny_llama) -> None:
    train = sample(builtin_split("sst2", "dev"), 16, 0)
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    run = run_local_lora(tiny_llama, SST2, train, train[:4], LoraSettings(batch_size=8), progress=False)
    assert run.steps == 2 and run.trainable_parameters > 0
    assert run.probabilities.shape == (4, 2)
    after = tiny_llama.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(p.requires_grad for p in tiny_llama.model.parameters())
