"""Classification tasks: prompt template, label words (verbalizer) and labelled data.

SST-2 (GLUE) is embedded in the package. Users bring their own TSV, CSV or JSONL
file with a text column and a label column; every malformed row is reported with
its file and line number, as an error or, with `skip_invalid`, as a row left out.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, TextIO, TypeVar

from protocol.errors import UserInputError

T = TypeVar("T")

# Protects the loader from a pathological file (one row should never be this large).
MAX_TEXT_CHARS = 20_000
# Skipped rows already listed by this process: an audit or a sweep loads its data file again for
# every row it runs, and the same list each time would bury everything else on stderr.
_LISTED: set[tuple[str, tuple[str, ...]]] = set()


@dataclass(frozen=True)
class TaskSpec:
    """How a text becomes a prompt and how labels map to label words."""

    name: str
    template: str
    label_words: tuple[str, ...]
    labels: tuple[str, ...]
    text_column: str = "sentence"
    label_column: str = "label"

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise UserInputError(f"prompt template {self.template!r} lacks the '{{text}}' slot")
        if len(self.label_words) < 2 or len(self.label_words) != len(self.labels):
            raise UserInputError(
                f"task {self.name!r}: need one label word per label and at least two labels "
                f"(labels {self.labels!r}, label words {self.label_words!r})"
            )
        if len(set(self.labels)) != len(self.labels):
            raise UserInputError(f"task {self.name!r}: repeated labels {self.labels!r}")

    @property
    def n_classes(self) -> int:
        """Number of classes C."""
        return len(self.labels)

    def prompt(self, text: str) -> str:
        """The prompt whose last token is the pivot."""
        return self.template.replace("{text}", text)


@dataclass(frozen=True)
class Example:
    """One labelled text; `label` is the class index into `TaskSpec.labels`."""

    text: str
    label: int

    def record(self) -> dict[str, object]:
        """What the device's ground truth keeps of this example."""
        return {"label": self.label, "text": self.text}


# The template is a measured choice: it beats the earlier "Review: {text}\nSentiment:" both
# zero-shot and after side tuning, over two seeds and two server recipes (BENCHMARKS.md,
# "Prompt and recipe").
SST2 = TaskSpec(
    name="sst2",
    template="Movie review: {text}\nOverall, the sentiment of this movie review is",
    label_words=(" negative", " positive"),
    labels=("0", "1"),
)

# The one list of built-in tasks.
BUILTIN_TASKS: dict[str, TaskSpec] = {SST2.name: SST2}


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserInputError(f"data file {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text ({exc})") from exc


# A data row: its line number, and its record or why it cannot be read.
Row = tuple[int, dict[str, object] | None, str | None]


def _rows(path: Path, text: str) -> list[Row]:
    """(line number, record, None) or (line number, None, problem) per row of a TSV, CSV or JSONL file."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".jsonl":
        rows: list[Row] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((number, None, f"invalid JSON ({exc.msg})"))
                continue
            rows.append((number, record, None) if isinstance(record, dict) else
                        (number, None, "expected a JSON object per line"))
        return rows
    if kind not in (".tsv", ".csv"):
        raise UserInputError(f"{path}: unsupported data format; use .tsv, .csv or .jsonl")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if kind == ".tsv" else ",",
                            quoting=csv.QUOTE_NONE if kind == ".tsv" else csv.QUOTE_MINIMAL)
    rows = []
    for record in reader:
        if None in record or any(v is None for v in record.values()):
            rows.append((reader.line_num, None, f"wrong number of columns (expected {reader.fieldnames})"))
        else:
            rows.append((reader.line_num, record, None))
    return rows


@dataclass(frozen=True)
class SkippedRows:
    """The rows of one data file left out as invalid (`--skip-invalid-rows`), of `rows` read."""

    path: str
    rows: int
    reasons: tuple[str, ...]  # "FILE:LINE: reason", in file order

    def report(self, stream: TextIO | None = None) -> None:
        """Each skipped row, then the count, on stderr; nothing when no row was skipped or when
        this process has listed the same rows of the same file already."""
        if not self.reasons or (self.path, self.reasons) in _LISTED:
            return
        _LISTED.add((self.path, self.reasons))
        stream = stream or sys.stderr
        for reason in self.reasons:
            print(reason, file=stream)
        print(f"skipped {len(self.reasons)} invalid rows of {self.rows} in {self.path}", file=stream)

    def record(self) -> dict[str, object]:
        """Its entry in a report's data provenance."""
        return {"rows_read": self.rows, "rows_skipped": len(self.reasons), "skipped": list(self.reasons)}


def parse_rows(path: Path, parse: Callable[[str, dict[str, object]], T],
               skip_invalid: bool = False) -> tuple[list[T], SkippedRows]:
    """Every row of a TSV, CSV or JSONL file (optionally .gz) through `parse(where, record)`,
    which raises UserInputError naming `where` (FILE:LINE) for a bad row. The first bad row
    is an error; with `skip_invalid` each bad row is left out and listed instead. No valid row
    is an error either way."""
    parsed: list[T] = []
    skipped: list[str] = []
    rows = _rows(path, _read_text(path))
    for number, record, problem in rows:
        where = f"{path}:{number}"
        try:
            if record is None:
                raise UserInputError(f"{where}: {problem}")
            parsed.append(parse(where, record))
        except UserInputError as exc:
            if not skip_invalid:
                raise
            skipped.append(str(exc))
    if not parsed:
        raise UserInputError(f"{path}: no examples" + (f" ({len(skipped)} invalid rows skipped)" if skipped else ""))
    return parsed, SkippedRows(str(path), len(rows), tuple(skipped))


def parse_examples(path: Path | str, task: TaskSpec,
                   skip_invalid: bool = False) -> tuple[list[Example], SkippedRows]:
    """Labelled examples for `task` from a TSV, CSV or JSONL file (optionally .gz), and the
    rows left out (none unless `skip_invalid`)."""
    label_index = {label: i for i, label in enumerate(task.labels)}

    def example(where: str, record: dict[str, object]) -> Example:
        for column in (task.text_column, task.label_column):
            if column not in record:
                raise UserInputError(f"{where}: missing column {column!r}")
        text = str(record[task.text_column]).strip()
        label = str(record[task.label_column]).strip()
        if not text:
            raise UserInputError(f"{where}: empty text")
        if len(text) > MAX_TEXT_CHARS:
            raise UserInputError(f"{where}: text longer than {MAX_TEXT_CHARS} characters")
        if label not in label_index:
            raise UserInputError(f"{where}: unknown label {label!r}; expected one of {list(task.labels)}")
        return Example(text=text, label=label_index[label])

    return parse_rows(Path(path), example, skip_invalid)


def load_examples(path: Path | str, task: TaskSpec, skip_invalid: bool = False) -> list[Example]:
    """Labelled examples for `task` from a TSV, CSV or JSONL file (optionally .gz); with
    `skip_invalid`, bad rows are reported on stderr and left out."""
    examples, skipped = parse_examples(path, task, skip_invalid)
    skipped.report()
    return examples


def builtin_split(task_name: str, split: str) -> list[Example]:
    """The embedded copy of a built-in task's split ('train' or 'dev')."""
    if task_name not in BUILTIN_TASKS:
        raise UserInputError(f"unknown task {task_name!r}; built in: {sorted(BUILTIN_TASKS)}")
    resource = resources.files("protocol") / "data" / task_name / f"{split}.tsv.gz"
    if not resource.is_file():
        raise UserInputError(f"task {task_name!r} has no split {split!r}; use 'train' or 'dev'")
    with resources.as_file(resource) as path:
        return load_examples(path, BUILTIN_TASKS[task_name])


def sample(examples: list[T], n: int | None, seed: int) -> list[T]:
    """A seed-fixed random subset of n examples (all of them, shuffled, when n is None)."""
    if n is not None and not 0 < n <= len(examples):
        raise UserInputError(f"asked for {n} examples but only {len(examples)} are available")
    chosen = list(examples)
    random.Random(seed).shuffle(chosen)
    return chosen if n is None else chosen[:n]
