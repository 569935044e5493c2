"""benchmarks/generation_ceiling.py on tiny-llama: the sequence read-out sees the answer positions the device
uploads and only earlier positions, and a read-out fitted on the evaluation split lowers its answer NLL."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.data.instructions import InstructionTask, load_instructions
from protocol.modes.generation.device import GenerationDevice
from tests.generation_data import alpaca_file

ROOT = Path(__file__).resolve().parents[1]
# The script imports its sibling `generation` as a script does (and drops the folder from sys.path again).
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("generation_ceiling", ROOT / "benchmarks" / "generation_ceiling.py")
ceiling = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ceiling  # its dataclasses look their module up
_spec.loader.exec_module(ceiling)


def _args(workdir: Path, **changes: object) -> argparse.Namespace:
    settings = dict(layers="2", forward_batch=2, workdir=str(workdir), epochs=4, lr=1e-2, position_batch=32,
                    sequence_batch=2, mlp_width=32, attention_width=16, heads=2, seed=0)
    return argparse.Namespace(**{**settings, **changes})


@pytest.fixture(scope="module")
def eval_split(tiny_llama: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[argparse.Namespace, dict]:
    """(args, the cached teacher-forced outputs of 6 Alpaca samples: both layers at the answer positions,
    layer 2 at every position)."""
    folder = tmp_path_factory.mktemp("ceiling")
    task = InstructionTask(max_answer_tokens=8)
    examples = load_instructions(str(alpaca_file(folder, 6)), task, False)
    device = GenerationDevice(tiny_llama, task, layers=(2,), progress=False)
    args = _args(folder)
    return args, ceiling.teacher_forced(args, device, examples, (1, 2), True, "eval")


def test_sequence_rows_are_the_uploaded_answer_positions(eval_split: tuple) -> None:
    _, data = eval_split
    starts = ceiling.sample_offsets(data["lengths"])
    rows = ceiling.sample_offsets(data["counts"])
    for i, (length, count) in enumerate(zip(data["lengths"].tolist(), data["counts"].tolist())):
        sequence = data["sequence"][starts[i]:starts[i + 1], 0]
        assert torch.equal(sequence[ceiling.answer_columns(length, count)], data["states"][rows[i]:rows[i + 1], 1])
    # The position before a sample's first answer row holds another state (the slice is not shifted by one).
    assert not torch.equal(data["sequence"][starts[0]:starts[1], 0][ceiling.answer_columns(
        int(data["lengths"][0]) - 1, int(data["counts"][0]))], data["states"][rows[0]:rows[1], 1])


def test_sequence_readout_sees_only_earlier_positions() -> None:
    torch.manual_seed(0)
    states = torch.randn(40, 12)
    network = ceiling.SequenceReadout(states, hidden_size=6, width=8, heads=2).eval()
    torch.nn.init.normal_(network.out.weight)
    sample = states[:10][None]
    later = sample.clone()
    later[0, 6:] += 5.0
    padded = torch.cat([sample, torch.full((1, 3, 12), 9.0)], dim=1)
    padding = torch.tensor([[False] * 10 + [True] * 3])
    with torch.inference_mode():
        base = network(sample, torch.zeros(1, 10, dtype=torch.bool))
        changed = network(later, torch.zeros(1, 10, dtype=torch.bool))
        with_padding = network(padded, padding)
    assert torch.allclose(base[0, :6], changed[0, :6], atol=1e-6)
    assert not torch.allclose(base[0, 6:], changed[0, 6:], atol=1e-3)
    assert torch.allclose(base, with_padding[:, :10], atol=1e-6)


@pytest.mark.parametrize("name", ["uploaded_linear", "sequence_attention"])
def test_readout_fitted_on_the_evaluation_split_lowers_its_nll(eval_split: tuple, tiny_llama: object,
                                                               name: str) -> None:
    args, data = eval_split
    weight = GenerationDevice(tiny_llama, InstructionTask(), layers=(2,), progress=False).weight
    result = ceiling.run_readout(args, name, {"eval": data}, weight)
    assert result["eval_answer_tokens"] == int(data["counts"].sum())
    assert result["answer_nll_reduction_ci95"][0] > 0.01
    # The training loss falls, and the score is the fitted split's: the first epoch starts at zero-shot (the
    # last layer starts at zero) and the fitted network is at least as good as its last epoch on average.
    assert result["training_loss_by_epoch"][-1] < result["training_loss_by_epoch"][0]
    assert result["eval_answer_nll"] <= result["training_loss_by_epoch"][-1] + 1e-3
    assert np.isclose(result["zero_shot_answer_nll"], result["training_loss_by_epoch"][0], atol=0.05)
    # A rerun with the same settings reads the result back; other settings fit again.
    assert ceiling.run_readout(args, name, {"eval": data}, weight) == result
    assert ceiling.run_readout(_args(Path(args.workdir), epochs=1), name, {"eval": data}, weight) != result


def test_boosting_rounds_refresh_the_signal_at_the_corrected_logits(eval_split: tuple, tiny_llama: object) -> None:
    """Round 1 is the fair MSE read-out itself; round 2 is fitted and judged from round 1's corrected logits.
    (The six samples serve as upload, validation and evaluation split: this checks the rounds' arithmetic.)"""
    args, data = eval_split
    args = argparse.Namespace(**{**vars(args), "rounds": "1,2", "workdir": str(Path(args.workdir) / "rounds")})
    Path(args.workdir).mkdir()
    weight = GenerationDevice(tiny_llama, InstructionTask(), layers=(2,), progress=False).weight
    splits = {"eval": data, "upload": data, "validation": data}
    single = ceiling.run_readout(args, "fair_linear_mse", splits, weight)
    first, second = ceiling.run_readout(args, "fair_linear_rounds", splits, weight)["rounds"]
    assert [first["round"], second["round"]] == [1, 2]
    assert first["dropped_at_round"] is None
    assert first["validation"]["factor"] > 0  # round 1 deployed, so round 2 starts from other logits
    assert np.isclose(first["eval_answer_nll"], single["eval_answer_nll"], rtol=1e-5)
    # Round 2's backbone is round 1's deployed model: its scale 0 is round 1's chosen NLL, not zero-shot's.
    assert np.isclose(second["validation"]["validation_nll_backbone"], first["validation"]["validation_nll_chosen"],
                      rtol=1e-4)
    assert not np.isclose(second["validation"]["validation_nll_backbone"], first["zero_shot_answer_nll"], rtol=1e-3)
    assert second["training_loss_by_epoch"] != first["training_loss_by_epoch"]
    assert second["eval_answer_nll"] <= first["eval_answer_nll"] + 1e-6
