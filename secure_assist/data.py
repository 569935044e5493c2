"""Turn a run configuration into a task specification and its train/eval examples."""

from __future__ import annotations

from typing import TypeVar

from protocol.errors import UserInputError
from protocol.tasks import BUILTIN_TASKS, Example, TaskSpec, builtin_split, load_examples, sample
from secure_assist.config import FinetuneConfig

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
    train = sample(train_pool, min(config.train_samples, len(train_pool)) if config.train_samples else None,
                   config.seed)
    evaluate = (sample(eval_pool, min(config.eval_samples, len(eval_pool)), config.seed + 1)
                if config.eval_samples else eval_pool)
    return train, evaluate


def resolve_data(config: FinetuneConfig) -> tuple[TaskSpec, list[Example], list[Example]]:
    """(task, training examples, evaluation examples), seed-fixed subsets as configured."""
    task = resolve_task(config)
    if config.train_file:
        train_pool = load_examples(config.train_file, task)
    elif task.name in BUILTIN_TASKS:
        train_pool = builtin_split(task.name, "train")
    else:
        raise UserInputError("a custom task needs --train-file")
    if config.eval_file:
        eval_pool = load_examples(config.eval_file, task)
    elif config.train_file is None:
        eval_pool = builtin_split(task.name, "dev")
    else:
        eval_pool = None
    return (task, *subsets(config, train_pool, eval_pool))
