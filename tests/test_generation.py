"""Generation tasks on tiny-llama with a few Alpaca rows: data errors, the r signal, the server's
objective, greedy decoding, the wire messages, end to end through finetune and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.errors import ProtocolError, UserInputError
from protocol.modes.generation.device import GenerationDevice, encode_answers, head_weight, residual_signal
from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.modes.generation.server import inverse_square_root
from protocol.data.instructions import InstructionExample, InstructionTask, load_instructions
from protocol.wire.messages import decode_message, encode_message
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.predict import predict_texts
from tests.generation_data import alpaca_file, alpaca_rows

TASK = InstructionTask(max_answer_tokens=6)


def examples(n: int) -> list[InstructionExample]:
    return [InstructionExample(instruction=r["instruction"], input=r["input"], output=r["output"], source=f"t:{i}")
            for i, r in enumerate(alpaca_rows(n))]


@pytest.mark.parametrize("content,message", [
    ('{"instruction": "a", "input": ""}\n', r"d.jsonl:1: missing column 'output'"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "  "}\n', r"d.jsonl:2: empty answer"),
    ('{"instruction": "", "output": "b"}\n', r"d.jsonl:1: empty instruction"),
    ('{"instruction": "a", "output": 3}\n', r"d.jsonl:1: instruction, input and answer must be text"),
    ("not json\n", r"d.jsonl:1: invalid JSON"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(UserInputError, match=message):
        load_instructions(path, InstructionTask())


def test_renamed_columns_and_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\n")
    rows = load_instructions(path, InstructionTask(instruction_column="question", output_column="answer"))
    assert rows[0].text == "What is 2+2?" and rows[0].output == "4" and rows[0].source.endswith("d.csv:2")


def test_cli_reports_a_bad_row_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "output": ""}\n')
    code = main(["finetune", "--task", "generation", "--model", "tiny-llama", "--train-file", str(path),
                 "--workdir", str(tmp_path / "run"), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and error.endswith("d.jsonl:2: empty answer")


def test_answer_tokens_are_truncated_or_end_with_eos(tiny_llama) -> None:
    tokenizer = tiny_llama.tokenizer
    short = InstructionExample(instruction="Say no.", input="", output="No")
    long = InstructionExample(instruction="Tell a story.", input="", output="word " * 40)
    assert TASK.answer_ids(tokenizer, short)[-1] == tokenizer.eos_token_id
    assert len(TASK.answer_ids(tokenizer, long)) == 6 and tokenizer.eos_token_id not in TASK.answer_ids(tokenizer, long)
    # The default prompt is the backbone's chat template around the user turn.
    assert "<|im_start|>assistant" in TASK.prompt(tokenizer, short)


def test_r_is_minus_the_gradient_of_the_token_cross_entropy(tiny_llama) -> None:
    batch = encode_answers(tiny_llama, TASK, examples(3))
    with torch.no_grad():
        out = tiny_llama.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    states = out.last_hidden_state[batch.positions].detach().requires_grad_(True)
    weight = head_weight(tiny_llama)
    torch.nn.functional.cross_entropy(states @ weight.T, batch.targets, reduction="sum").backward()
    np.testing.assert_allclose(residual_signal(weight, states.detach(), batch.targets).numpy(),
                               -states.grad.numpy(), atol=1e-5)


def test_whitened_mse_has_the_optimum_of_the_mse_through_the_head() -> None:
    rng = np.random.default_rng(0)
    head = rng.normal(size=(50, 8))  # W_U (V, d)
    gram, delta = head.T @ head, rng.normal(size=(5, 50))
    r = delta @ head  # r = W_Uᵀ Δ per row
    root = inverse_square_root(gram)
    np.testing.assert_allclose(root @ gram @ root, np.eye(8), atol=1e-8)
    # argmin_s ‖W_U s − Δ‖² is s = G⁻¹ r; the server's target u = G^{-1/2} r maps back through G^{-1/2}.
    best = np.linalg.lstsq(head, delta.T, rcond=None)[0].T
    np.testing.assert_allclose((r @ root) @ root, best, atol=1e-8)


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_llama) -> None:
    device = GenerationDevice(tiny_llama, TASK, batch_size=4, progress=False)
    prompts = examples(4)
    together = device.generate(prompts, None, max_new_tokens=5)
    alone = [device.generate([p], None, max_new_tokens=5)[0] for p in prompts]
    assert together == alone and all(len(ids) <= 5 for ids in together)


def test_generation_messages_validate() -> None:
    upload = GenerationUpload(sample_ids=np.zeros((2, 16), np.uint8), counts=np.array([2, 1]),
                              activations=np.zeros((3, 2, 4), np.float16), residual=np.zeros((3, 4), np.float32),
                              layers=(1, 2))
    back = decode_message(encode_message(upload))
    assert isinstance(back, GenerationUpload) and [s.stop for s in back.sample_rows()] == [2, 3]
    bad = GenerationUpload(sample_ids=upload.sample_ids, counts=np.array([2, 2]), activations=upload.activations,
                           residual=upload.residual, layers=(1, 2))
    with pytest.raises(ProtocolError, match="inconsistent shapes"):
        decode_message(encode_message(bad))
    with pytest.raises(ProtocolError, match="symmetric"):
        decode_message(encode_message(HeadGram(gram=np.array([[1, 2], [0, 1]], np.float32))))


def test_generation_end_to_end_and_predict(tmp_path: Path) -> None:
    data = alpaca_file(tmp_path, 40)
    config = FinetuneConfig(model="tiny-llama", task="generation", train_file=str(data), train_samples=30,
                            eval_samples=8, epochs=2, max_answer_tokens=6, rouge_samples=4,
                            workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert summary.mode == "generation" and summary.head == "hidden_correction"
    # 10% of 30 is 3, below the floor of 10 validation samples.
    assert summary.n_train == 20 and summary.safeguard["validation_samples"] == 10
    assert summary.device_forwards_epoch1 == 20 and summary.device_forwards_after_epoch1 == 0
    assert summary.cache_samples == 20 and summary.cache_reads == 20
    for key in ("eval_answer_nll", "zero_shot_answer_nll", "eval_token_accuracy", "rouge_l"):
        assert np.isfinite(summary.metrics[key]), key
    # Uploads: ≤ 6 positions × (2 layers × 64 values fp16 + 64 float32 r) per sample, plus framing.
    assert summary.upload_bytes_per_sample < 6 * (2 * 64 * 2 + 64 * 4) + 4096
    rows = predict_texts(summary.model_file, ["Name a color.", "Add 2 and 3."], progress=False)
    assert [r["text"] for r in rows] == ["Name a color.", "Add 2 and 3."]
    assert all(isinstance(r["answer"], str) and r["answer"] for r in rows)


def test_generation_local_uploads_nothing(tmp_path: Path) -> None:
    data = alpaca_file(tmp_path, 30)
    summary = run_finetune(FinetuneConfig(model="tiny-llama", task="generation", mode="generation_local",
                                          train_file=str(data), train_samples=20, eval_samples=5, epochs=2,
                                          max_answer_tokens=4, rouge_samples=2, workdir=str(tmp_path / "run")),
                           progress=False)
    assert summary.bytes_up == 0 and summary.server_view is None and summary.device_train_seconds > 0


def test_mode_and_task_must_match(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="trains generation tasks"):
        run_finetune(FinetuneConfig(model="tiny-llama", mode="generation", workdir=str(tmp_path / "run")))
    with pytest.raises(UserInputError, match="needs --train-file"):
        run_finetune(FinetuneConfig(model="tiny-llama", task="generation", workdir=str(tmp_path / "run")))
    with pytest.raises(UserInputError, match="no generation training mode supports"):
        run_finetune(FinetuneConfig(model="tiny-llama", task="generation", train_file=json.__file__,
                                    mechanism=("gaussian",), epsilon=1.0, workdir=str(tmp_path / "run")))
