"""More samples asked for than the data holds: the run uses what there is and says so, one line in the CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from protocol.errors import CappedRequestWarning
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.data import subsets


def test_a_request_beyond_the_pools_is_capped_and_said() -> None:
    pool = list(range(50))
    with pytest.warns(CappedRequestWarning) as caught:
        train, evaluate = subsets(FinetuneConfig(train_samples=45, eval_samples=30), pool, None)
    # Without an evaluation pool 20% (10) is held out: 40 training samples remain.
    assert (len(train), len(evaluate)) == (40, 10)
    assert not set(train) & set(evaluate)
    assert [str(w.message) for w in caught] == [
        "--train-samples 45 is more than the 40 training samples available (without --eval-file, 20% of the train "
        "file is held out for evaluation): using 40",
        "--eval-samples 30 is more than the 10 evaluation samples available: using 10"]


def test_a_request_within_the_pools_or_the_default_says_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, evaluate = subsets(FinetuneConfig(train_samples=40, eval_samples=5), list(range(50)), list(range(9)))
        assert (len(train), len(evaluate)) == (40, 5)
        # The default (2,000) is a ceiling: a small pool is used whole without a word.
        train, evaluate = subsets(FinetuneConfig(), list(range(50)), None)
        assert (len(train), len(evaluate)) == (40, 10)


def test_the_cli_shows_the_cap_as_one_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"text number {i}\t{i % 2}\n" for i in range(20)))
    argv = ["finetune", "--model", "tiny-llama", "--task", "custom", "--train-file", str(data), "--template",
            "{text} It was", "--label-words", " bad| good", "--labels", "0,1", "--train-samples", "30",
            "--epochs", "1", "--rank", "2", "--mechanism", "none", "--quiet",
            "--workdir", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning: --train-samples")] == [
        "warning: --train-samples 30 is more than the 16 training samples available (without --eval-file, 20% of "
        "the train file is held out for evaluation): using 16"]
