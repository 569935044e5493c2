"""The device-side forward cache: identical outputs to a fresh pass, reused on the same data."""

from __future__ import annotations

import json

import pytest
import torch

from protocol.model.backbone import Backbone
from protocol.device.forward_device import DeviceRole
from protocol.device.features import ForwardCachingDevice, encode_dataset
from protocol.data.tasks import SST2, builtin_split
from secure_assist.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SECURE_ASSIST_CACHE", str(tmp_path / "cache"))


def test_cached_batches_equal_a_fresh_pass(tiny_llama: Backbone) -> None:
    # In the order the cache computes them (shortest first: less padding), so the batches, and the
    # last bits of their outputs, are the same.
    examples = sorted(builtin_split("sst2", "dev")[:20], key=lambda e: len(e.text))
    fresh = list(DeviceRole(tiny_llama, SST2, batch_size=8, progress=False).batches(examples, "x"))
    computing = ForwardCachingDevice(tiny_llama, SST2, batch_size=8, progress=False)
    reading = ForwardCachingDevice(tiny_llama, SST2, batch_size=8, progress=False)
    for caching in (computing, computing, reading):  # computes and stores, serves from memory, reads back
        served = list(caching.batches(examples, "x"))
        assert [chunk for chunk, _ in served] == [chunk for chunk, _ in fresh]
        for (_, a), (_, b) in zip(served, fresh):
            assert torch.equal(a.activations, b.activations) and torch.equal(a.label_logits, b.label_logits)
    assert computing.forward_samples == 20 and computing.reused_forwards == 0  # paid once, counted once
    assert reading.forward_samples == 0 and reading.reused_forwards == 20
    assert reading.reused_forward_seconds == pytest.approx(computing.forward_seconds, rel=1e-6)


def test_subsets_and_reorderings_of_a_pool_share_its_entry(tiny_llama: Backbone) -> None:
    train = builtin_split("sst2", "dev")[:24]
    first = ForwardCachingDevice(tiny_llama, SST2, batch_size=8, progress=False, pools=[train])
    whole = first.outputs(train)
    upload, validation = train[20:] + train[:12], train[12:20]  # another order, then the rest
    second = ForwardCachingDevice(tiny_llama, SST2, batch_size=8, progress=False, pools=[list(reversed(train))])
    parts = [second.outputs(upload), second.outputs(validation)]
    assert first.forward_samples == 24 and second.forward_samples == 0 and second.reused_forwards == 24
    assert second.reused_forward_seconds == pytest.approx(first.forward_seconds, rel=1e-6)
    assert torch.equal(parts[0].activations, torch.cat([whole.activations[20:], whole.activations[:12]]))
    assert torch.equal(parts[1].label_logits, whole.label_logits[12:20])


def test_damaged_cache_file_is_recomputed(tiny_llama: Backbone, tmp_path) -> None:
    examples = builtin_split("sst2", "dev")[:6]
    device = DeviceRole(tiny_llama, SST2, progress=False)
    first = encode_dataset(device, examples)
    (entry,) = (tmp_path / "cache" / "device-features").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    again = encode_dataset(device, examples)
    assert torch.equal(first.activations, again.activations) and device.forward_samples == 12


def test_finetune_reuses_forwards_when_asked(tmp_path, capsys) -> None:
    argv = ["finetune", "--model", "tiny-llama", "--train-samples", "32", "--eval-samples", "16", "--epochs", "2",
            "--rank", "4", "--quiet", "--reuse-forwards", "--mechanism-seed", "0"]
    summaries = []
    for run in ("a", "b"):
        assert main(argv + ["--workdir", str(tmp_path / run)]) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    first, second = summaries
    assert first["device_forwards_reused"] == 0 and first["device_forwards_epoch1"] == 32
    assert second["device_forwards_reused"] == 32 + 16 and second["device_forwards_epoch1"] == 0
    assert second["accuracy"] == first["accuracy"] and second["zero_shot_accuracy"] == first["zero_shot_accuracy"]


def test_shared_table_serves_any_subset_in_any_order(tiny_llama: Backbone) -> None:
    from protocol.device.shared_forwards import SharedForwards, serving, spec_key

    examples = builtin_split("sst2", "dev")[:20]
    fresh = DeviceRole(tiny_llama, SST2, progress=False)
    whole = encode_dataset(fresh, examples, use_cache=False)
    table = SharedForwards(spec_key(fresh), [e.text for e in examples], whole.activations.numpy().astype("float16"),
                           whole.label_logits.numpy(), seconds_per_forward=0.5, computed=20)
    subset = [examples[i] for i in (7, 2, 19, 11)]
    caching = ForwardCachingDevice(tiny_llama, SST2, batch_size=3, progress=False)
    with serving([table]):
        served = list(caching.batches(subset, "x"))
    assert [chunk for chunk, _ in served] == [subset[:3], subset[3:]]
    # The table's own rows: the pass over the whole list (a pass over other batches may differ in the last bits).
    rows = [7, 2, 19, 11]
    assert torch.equal(torch.cat([p.activations for _, p in served]), whole.activations[rows])
    assert torch.equal(torch.cat([p.label_logits for _, p in served]), whole.label_logits[rows])
    assert caching.forward_samples == 0 and caching.reused_forwards == 4 and caching.reused_forward_seconds == 2.0
    # Another device configuration: computed as before. A text the table lacks: computed alone, in the
    # device's own entry, while the table still serves the others.
    other = ForwardCachingDevice(tiny_llama, SST2, layers=(1,), progress=False)
    with serving([table]):
        list(other.batches(subset, "x"))
        mixed = caching.outputs([*subset, builtin_split("sst2", "dev")[30]])
    assert other.forward_samples == 4 and caching.forward_samples == 1 and caching.reused_forwards == 8
    assert torch.equal(mixed.activations[:4], whole.activations[rows]) and len(mixed.activations) == 5
    list(caching.batches(subset, "x"))  # outside `serving`: from an entry of its own
    assert caching.forward_samples == 5
