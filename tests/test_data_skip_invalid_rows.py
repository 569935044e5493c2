"""--skip-invalid-rows: a data file with a few bad rows is used as is, each bad row reported
as FILE:LINE: reason on stderr and counted in the data provenance; without the flag the
first bad row stays an error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from protocol.data.instructions import InstructionTask, load_instructions, parse_instructions
from protocol.data.tasks import SST2, load_examples
from protocol.errors import UserInputError
from secure_assist.audit.config import AuditConfig, fingerprint
from secure_assist.cli import build_parser
from secure_assist.commands.finetune import config_from_args
from secure_assist.compare.grid import point_identity
from secure_assist.config import FinetuneConfig
from secure_assist.data import data_provenance, resolve_data
from tests.generation_data import ALPACA

# Each file: three good rows and two bad ones (lines 3 and 5 counting the header of CSV/TSV).
CLASSIFICATION_FILES = {
    ".tsv": ("sentence\tlabel\ngood\t1\nbad\t7\nfine\t1\n\t0\ndull\t0\n",
             ["data.tsv:3: unknown label '7'", "data.tsv:5: empty text"]),
    ".csv": ("sentence,label\ngood,1\nbad,1,extra\nfine,1\n\"\",0\ndull,0\n",
             ["data.csv:3: wrong number of columns", "data.csv:5: empty text"]),
    ".jsonl": ('{"sentence": "good", "label": 1}\n{not json}\n{"sentence": "fine", "label": 1}\n'
               '{"text": "x", "label": 0}\n{"sentence": "dull", "label": 0}\n',
               ["data.jsonl:2: invalid JSON", "data.jsonl:4: missing column 'sentence'"]),
}


@pytest.mark.parametrize("suffix", sorted(CLASSIFICATION_FILES))
def test_classification_rows_are_skipped_only_with_the_flag(tmp_path: Path, capsys, suffix: str) -> None:
    content, reasons = CLASSIFICATION_FILES[suffix]
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(UserInputError, match=reasons[0]):  # the first bad row, as before
        load_examples(path, SST2)
    assert capsys.readouterr().err == ""
    examples = load_examples(path, SST2, skip_invalid=True)
    assert [e.label for e in examples] == [1, 1, 0]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    for line, reason in zip(lines, reasons):
        assert line.startswith(str(tmp_path / reason))
    assert lines[2] == f"skipped 2 invalid rows of 5 in {path}"


def test_nothing_valid_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("sentence\tlabel\nbad\t7\n\t1\n")
    with pytest.raises(UserInputError, match=r"data.tsv: no examples \(2 invalid rows skipped\)"):
        load_examples(path, SST2, skip_invalid=True)


def test_generation_rows_are_skipped_only_with_the_flag(tmp_path: Path, capsys) -> None:
    rows = [{"instruction": "Add 1 and 1.", "input": "", "output": "2"},
            {"instruction": "Say hi.", "input": "", "output": "  "},
            {"instruction": "", "input": "x", "output": "y"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UserInputError, match="alpaca.jsonl:2: empty answer"):
        load_instructions(path, InstructionTask())
    examples = load_instructions(path, InstructionTask(), skip_invalid=True)
    assert [e.output for e in examples] == ["2", "Blue."]
    assert capsys.readouterr().err.splitlines() == [f"{path}:2: empty answer", f"{path}:3: empty instruction",
                                                    f"skipped 2 invalid rows of 4 in {path}"]


def test_the_flag_reaches_the_config_of_every_data_command_and_the_provenance(tmp_path: Path, capsys) -> None:
    content, reasons = CLASSIFICATION_FILES[".tsv"]
    path = tmp_path / "data.tsv"
    path.write_text(content)
    parser = build_parser()
    common = ["--task", "custom", "--train-file", str(path), "--template", "{text} is", "--label-words",
              " bad| good", "--labels", "0,1"]
    for command in ("finetune", "audit", "compare", "device"):
        extra = ["--server", "h:1", "--keys", "k", "--name", "d"] if command == "device" else []
        args = parser.parse_args([command, *extra, *common, "--skip-invalid-rows"])
        assert args.skip_invalid_rows is True, command
    args = parser.parse_args(["finetune", *common, "--skip-invalid-rows", "--train-samples", "2"])
    config = config_from_args(args)
    assert FinetuneConfig().skip_invalid_rows is False
    task, train, evaluate = resolve_data(config)
    assert len(train) + len(evaluate) == 3
    capsys.readouterr()
    provenance = data_provenance(config, task, train, evaluate)
    assert capsys.readouterr().err == ""  # the provenance re-reads the file silently
    assert provenance["train"]["rows_read"] == 5 and provenance["train"]["rows_skipped"] == 2
    assert [line.split(": ", 1)[0] for line in provenance["train"]["skipped"]] == [f"{path}:3", f"{path}:5"]
    without = config_from_args(parser.parse_args(["finetune", *common]))
    with pytest.raises(UserInputError, match="data.tsv:3: unknown label"):
        resolve_data(without)


def test_audit_parses_the_flag_for_the_alpaca_file() -> None:
    args = build_parser().parse_args(["audit", "--task", "generation", "--train-file", str(ALPACA),
                                      "--skip-invalid-rows"])
    config = config_from_args(args, AuditConfig)
    assert config.skip_invalid_rows is True and config.train_file == str(ALPACA)
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["audit", "--task", "generation", "--train-file", str(ALPACA),
                                   "--skip-invalid-rows", "--help"])
    assert stop.value.code == 0


def test_shared_alpaca_file_has_exactly_two_bad_rows() -> None:
    if not ALPACA.is_file():
        pytest.skip(f"shared Alpaca data not found at {ALPACA}")
    with pytest.raises(UserInputError, match="empty answer"):
        parse_instructions(ALPACA, InstructionTask())
    examples, skipped = parse_instructions(ALPACA, InstructionTask(), skip_invalid=True)
    assert (len(examples), skipped.rows, len(skipped.reasons)) == (4998, 5000, 2)
    assert all(reason.endswith(": empty answer") for reason in skipped.reasons)


def test_a_file_loaded_again_lists_its_skipped_rows_once(tmp_path: Path, capsys) -> None:
    # An audit or a sweep loads its data file again for every row it runs.
    path = tmp_path / "data.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t7\nfine\t0\n")
    for _ in range(3):
        assert len(load_examples(path, SST2, skip_invalid=True)) == 2
    assert capsys.readouterr().err.splitlines() == [f"{path}:3: unknown label '7'; expected one of ['0', '1']",
                                                    f"skipped 1 invalid rows of 3 in {path}"]
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\n\t1\n")  # other invalid rows: listed again
    load_examples(path, SST2, skip_invalid=True)
    assert capsys.readouterr().err.splitlines() == [f"{path}:4: empty text", f"skipped 1 invalid rows of 3 in {path}"]


def test_the_flag_leaves_the_fingerprints_unchanged() -> None:
    # It decides whether a run works, never what it computes: audits and saved sweep points keep their fingerprints.
    audit = AuditConfig(model="tiny-llama")
    assert fingerprint(audit) == fingerprint(replace(audit, skip_invalid_rows=True))
    run = FinetuneConfig(model="tiny-llama")
    assert point_identity(run, ()) == point_identity(replace(run, skip_invalid_rows=True), ())
