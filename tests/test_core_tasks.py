"""Data loading: built-in SST-2 and user files, with file:line errors."""

import json
from pathlib import Path

import pytest

from protocol.errors import UserInputError
from protocol.data.tasks import SST2, TaskSpec, builtin_split, load_examples, sample


def test_builtin_sst2_splits() -> None:
    train, dev = builtin_split("sst2", "train"), builtin_split("sst2", "dev")
    assert len(train) == 67349 and len(dev) == 872
    assert {e.label for e in dev} == {0, 1}


def test_sample_is_seed_fixed() -> None:
    dev = builtin_split("sst2", "dev")
    assert sample(dev, 10, 3) == sample(dev, 10, 3) != sample(dev, 10, 4)


@pytest.mark.parametrize("suffix,content", [
    (".tsv", "sentence\tlabel\ngood\t1\nbad\t0\n"),
    (".csv", "sentence,label\n\"good, really\",1\nbad,0\n"),
    (".jsonl", json.dumps({"sentence": "good", "label": 1}) + "\n" + json.dumps({"sentence": "bad", "label": 0}) + "\n"),
])
def test_user_formats(tmp_path: Path, suffix: str, content: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    examples = load_examples(path, SST2)
    assert [e.label for e in examples] == [1, 0]


@pytest.mark.parametrize("content,message", [
    ("sentence\tlabel\ngood\t1\nbad\t7\n", r"data.tsv:3: unknown label '7'"),
    ("sentence\tlabel\ngood\t1\t9\n", r"data.tsv:2: wrong number of columns"),
    ("text\tlabel\ngood\t1\n", r"data.tsv:2: missing column 'sentence'"),
    ("sentence\tlabel\n\t1\n", r"data.tsv:2: empty text"),
    ("", r"no examples"),
])
def test_malformed_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "data.tsv"
    path.write_text(content)
    with pytest.raises(UserInputError, match=message):
        load_examples(path, SST2)


def test_bad_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"sentence": "ok", "label": 1}\n{not json}\n')
    with pytest.raises(UserInputError, match=r"d.jsonl:2: invalid JSON"):
        load_examples(path, SST2)


def test_missing_file_and_bad_template() -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        load_examples("/nonexistent.tsv", SST2)
    with pytest.raises(UserInputError, match="lacks"):
        TaskSpec(name="x", template="no slot", label_words=(" a", " b"), labels=("0", "1"))
