"""Turn a run configuration into a task specification and its train/eval examples."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import TypeVar

from protocol.errors import CappedRequestWarning, UserInputError
from protocol.data.instructions import InstructionTask, parse_instructions
from protocol.data.tasks import BUILTIN_TASKS, Example, TaskSpec, builtin_split, load_examples, parse_examples, sample
from secure_assist.config import FinetuneConfig
from secure_assist.devices.share import device_share

# Share of a custom train file held out for evaluation when no eval file is given.
HELD_OUT_FRACTION = 0.2

E = TypeVar("E")


def resolve_task(config: FinetuneConfig) -> TaskSpec:
    """The built-in task, or a custom one from the template/label flags."""
    if config.task in BUILTIN_TASKS:
        base = BUILTIN_TASKS[config.task]
        return TaskSpec(name=base.name, template=config.template or base.template,
                        label_words=config.label_words or base.label_words,
                        labels=config.labels or base.labels,
                        text_column=config.text_column, label_column=config.label_column)
    if config.task != "custom":
        raise UserInputError(f"unknown task {config.task!r}; use one of {sorted(BUILTIN_TASKS)}, 'custom' or "
                             "'generation'")
    missing = [name for name in ("train_file", "template", "label_words", "labels") if getattr(config, name) is None]
    if missing:
        raise UserInputError(f"a custom task needs {', '.join('--' + m.replace('_', '-') for m in missing)}")
    return TaskSpec(name="custom", template=config.template, label_words=config.label_words,
                    labels=config.labels, text_column=config.text_column, label_column=config.label_column)


def subsets(config: FinetuneConfig, train_pool: list[E], eval_pool: list[E] | None) -> tuple[list[E], list[E]]:
    """(training, evaluation) examples: seed-fixed subsets of the pools; without an evaluation
    pool, a seed-fixed share of the training pool, disjoint from the training samples."""
    if eval_pool is None:
        shuffled = sample(train_pool, None, config.seed)
        cut = max(1, int(len(shuffled) * HELD_OUT_FRACTION))
        eval_pool, train_pool = shuffled[:cut], shuffled[cut:]
        held_out = f" (without --eval-file, {HELD_OUT_FRACTION:.0%} of the train file is held out for evaluation)"
    else:
        held_out = ""
    train = sample(train_pool, capped(config, "train_samples", len(train_pool), "training", held_out)
                   if config.train_samples else None, config.seed)
    evaluate = (sample(eval_pool, capped(config, "eval_samples", len(eval_pool), "evaluation", ""), config.seed + 1)
                if config.eval_samples else eval_pool)
    return train, evaluate


def capped(config: FinetuneConfig, name: str, available: int, split: str, why: str) -> int:
    """The samples `config.<name>` asks for, or `available` where that is fewer: the run goes on with every
    sample there is rather than stopping, and its summary's sample counts are what it used. A request other than
    the field's default (an explicit one) that the data cannot serve is said in a `CappedRequestWarning`; the
    default is a ceiling, so a small data file is no surprise to warn about."""
    asked, default = getattr(config, name), next(f.default for f in fields(FinetuneConfig) if f.name == name)
    flag = "--" + name.replace("_", "-")
    if available < asked != default:
        warnings.warn(f"{flag} {asked} is more than the {available} {split} samples available{why}: using {available}",
                      CappedRequestWarning, stacklevel=3)
    return min(asked, available)


def resolve_data(config: FinetuneConfig) -> tuple[TaskSpec, list[Example], list[Example]]:
    """(task, training examples, evaluation examples), seed-fixed subsets as configured."""
    task = resolve_task(config)
    if config.train_file:
        train_pool = load_examples(config.train_file, task, config.skip_invalid_rows)
    elif task.name in BUILTIN_TASKS:
        train_pool = builtin_split(task.name, "train")
    else:
        raise UserInputError("a custom task needs --train-file")
    if config.eval_file:
        eval_pool = load_examples(config.eval_file, task, config.skip_invalid_rows)
    elif config.train_file is None:
        eval_pool = builtin_split(task.name, "dev")
    else:
        eval_pool = None
    train, evaluate = subsets(config, train_pool, eval_pool)
    return task, device_share(config, train, len(task.labels)), evaluate


def file_provenance(path: str | None, task: TaskSpec | InstructionTask, split: str) -> dict[str, object]:
    """Where a split came from: the file (or the embedded copy) and the sha256 of its bytes."""
    if path is None:
        resource = resources.files("protocol") / "data" / task.name / f"{split}.tsv.gz"
        return {"source": f"embedded {task.name} {split} split",
                "sha256": hashlib.sha256(resource.read_bytes()).hexdigest()}
    return {"source": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def skipped_rows(path: str | None, task: TaskSpec | InstructionTask, skip_invalid: bool) -> dict[str, object]:
    """A data file's rows read and left out as invalid, for provenance: re-read silently, with
    the loaders' own checks (the file is small next to a run, and the loaders report on stderr)."""
    if path is None or not skip_invalid:
        return {}
    parse = parse_examples if isinstance(task, TaskSpec) else parse_instructions
    return parse(path, task, skip_invalid=True)[1].record()


def data_provenance(config: FinetuneConfig, task: TaskSpec | InstructionTask, train: list[Example] | list[E],
                    evaluate: list[Example] | list[E]) -> dict[str, object]:
    """The data an audit ran on: each file's sha256 and the rows used (training rows include
    the device's validation split of protected runs); a classification task adds its
    template, labels and class counts; with --skip-invalid-rows, each file's rows read and
    the invalid rows left out."""
    builtin = config.train_file is None
    eval_source = config.eval_file or config.train_file
    labelled = isinstance(task, TaskSpec)
    skip = config.skip_invalid_rows
    return {"task": task.name,
            **({"template": task.template, "label_words": list(task.label_words), "labels": list(task.labels),
                "classes": task.n_classes} if labelled else {}),
            "train": {**file_provenance(config.train_file, task, "train"), "rows_used": len(train),
                      **({"class_counts": class_counts(train, task)} if labelled else {}),
                      **skipped_rows(config.train_file, task, skip)},
            "eval": {**file_provenance(eval_source, task, "dev"), "rows_used": len(evaluate),
                     **({"class_counts": class_counts(evaluate, task)} if labelled else {}),
                     **skipped_rows(config.eval_file, task, skip),
                     "split": "its own file" if config.eval_file or builtin else
                              f"{HELD_OUT_FRACTION:.0%} of --train-file held out (seed-fixed)"}}


def class_counts(examples: list[Example], task: TaskSpec) -> dict[str, int]:
    """Rows per label value."""
    counts = [0] * task.n_classes
    for example in examples:
        counts[example.label] += 1
    return dict(zip(task.labels, counts))
