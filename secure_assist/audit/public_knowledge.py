"""What the attacker may know besides the server's view: public labeled examples of the
task, an unlabeled corpus, a pool of candidate texts, the texts of a few uploads (known
pairs), the device's mechanisms, and the public backbone's forward
passes over them (computed through the device-feature cache, so repeated audits and
variants pay for them once).

Where public data comes from *(choice, stated in every audit report)*: the user's
`--public-file`; otherwise, for a built-in task, rows of its embedded training split the
run does not use; for a custom task, rows of `--train-file` not drawn for training or
evaluation (a disjoint split of the user's own file).

Generation tasks (`protocol.data.instructions.InstructionTask`) take public instruction rows
from the same places (there is no built-in one: `--public-file` or `--train-file`); the
attacker's knowledge is then public examples with answers and the public backbone's states
at their answer positions (`secure_assist.audit.answer_audit.AnswerStates`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import PublicFeatures, PublicKnowledge
from attacks.public_model import public_backbone
from protocol.device.features import ForwardCachingDevice
from protocol.errors import UserInputError
from protocol.data.instructions import InstructionExample, InstructionTask, load_instructions
from protocol.data.tasks import BUILTIN_TASKS, Example, TaskSpec, builtin_split, load_examples, sample
from secure_assist.audit.answer_audit import AnswerStates

PUBLIC_LABELED = 128
PUBLIC_UNLABELED = 1000
# Public instruction examples (with answers) a generation attacker runs through the public backbone.
PUBLIC_EXAMPLES = 300
# Uploads whose text the server knows (it made the device process them): the known-pair attacks use the first k.
KNOWN_SAMPLES = 64


class CachedFeatures:
    """The attacker's public-backbone forward passes, via the device-feature disk cache.

    `groups` are the text sets it will be asked about (the private texts, the public
    corpus, the labeled examples); any request made of their texts reads their entries.
    """

    def __init__(self, backbone_name: str, task: TaskSpec, groups: list[list[str]], progress: bool = True) -> None:
        self._role = ForwardCachingDevice(public_backbone(backbone_name), task, progress=progress,
                                          pools=[[Example(text=t, label=0) for t in group] for group in groups])

    def __call__(self, texts: list[str], layers: tuple[int, ...]) -> PublicFeatures:
        outputs = self._role.outputs([Example(text=t, label=0) for t in texts])
        columns = [self._role.layers.index(i) for i in layers]
        return PublicFeatures(activations=outputs.activations[:, columns].numpy(),
                              label_logits=outputs.label_logits.numpy())


def _interleave_classes(examples: list[Example], n_classes: int) -> list[Example]:
    """Round-robin over classes so every prefix (k = 8, 32, ...) holds each class."""
    by_class = [[e for e in examples if e.label == c] for c in range(n_classes)]
    order = []
    for i in range(max((len(c) for c in by_class), default=0)):
        order += [c[i] for c in by_class if i < len(c)]
    return order


@dataclass(frozen=True)
class PublicData:
    """The attacker's public rows and a sentence saying where they come from."""

    examples: list[Example] | list[InstructionExample]
    source: str
    file: str | None = None  # the file they were read from, if any


def public_data(task: TaskSpec | InstructionTask, public_file: str | None, train_file: str | None,
                used: list[Example] | list[InstructionExample], seed: int = 0,
                skip_invalid: bool = False) -> PublicData:
    """The public rows of a run whose private rows are `used` (training and evaluation), in a
    seed-fixed order (the order the attacker draws them in). `skip_invalid`: leave out invalid
    rows of the files (--skip-invalid-rows), as the run itself did."""
    generation = isinstance(task, InstructionTask)

    def load(path: str, task: TaskSpec | InstructionTask) -> list[Example] | list[InstructionExample]:
        return (load_instructions if generation else load_examples)(path, task, skip_invalid)

    private = {e.text for e in used}
    if public_file:
        rows = sample(load(public_file, task), None, seed + 1000)
        if generation:
            # No generation task is built in, so a generation attack's public file is often the device's own
            # data file: its rows the run used are left out.
            rows = [e for e in rows if e.text not in private]
        return PublicData(rows, f"--public-file {public_file}", public_file)
    if train_file:
        rows = [e for e in sample(load(train_file, task), None, seed + 1000) if e.text not in private]
        return PublicData(rows, f"rows of --train-file {train_file} not drawn for training or evaluation "
                                "(a disjoint split of the user's file)", train_file)
    if task.name in BUILTIN_TASKS:
        rows = [e for e in sample(builtin_split(task.name, "train"), None, seed + 1000) if e.text not in private]
        return PublicData(rows, f"rows of the embedded {task.name} training split the run does not use")
    raise UserInputError(f"no public data for task {task.name!r}: pass --public-file")


def known_samples(uploads: list[tuple[str, str]], seed: int = 0) -> tuple[tuple[str, str], ...]:
    """(sample id, text) of `KNOWN_SAMPLES` of the `uploads`, seed-fixed: the texts a server made
    the device process (threat model of the known-pair attacks: it injected them into the
    device's data and recognised their uploads)."""
    order = np.random.default_rng([seed, 2]).permutation(len(uploads))[:KNOWN_SAMPLES]
    return tuple(uploads[i] for i in order)


def knowledge(backbone_name: str, task: TaskSpec | InstructionTask, public: PublicData,
              uploads: list[tuple[str, str]], seed: int = 0, progress: bool = True,
              private_pool: list[str] | None = None, mechanisms: tuple[str, ...] | None = None) -> PublicKnowledge:
    """k labeled examples (classes interleaved), an unlabeled corpus, and a candidate pool of
    the private texts mixed with the public ones (the 'suspect list' of candidate matching),
    drawn in `public`'s order; the texts of a few uploads (known pairs) and the device's
    mechanisms, if given (public, not secret). `uploads`: (sample id, text) of the run's
    uploads. `private_pool`: a superset of the private texts whose forward passes the cache
    already holds (the audit's whole training set). A generation task gets the first
    `PUBLIC_EXAMPLES` public instruction rows and the public backbone's answer-position states."""
    if isinstance(task, InstructionTask):
        return PublicKnowledge(backbone_name=backbone_name, task=task,
                               public_examples=tuple(public.examples[:PUBLIC_EXAMPLES]),
                               answer_states=AnswerStates(backbone_name, task), seed=seed, mechanisms=mechanisms,
                               known_samples=known_samples(uploads, seed))
    private_texts = [text for _, text in uploads]
    pool = public.examples
    labeled = _interleave_classes(pool[:PUBLIC_LABELED], task.n_classes)
    unlabeled = [e.text for e in pool[PUBLIC_LABELED:PUBLIC_LABELED + PUBLIC_UNLABELED]]
    groups = [private_pool or private_texts, unlabeled, [e.text for e in labeled]]
    return PublicKnowledge(backbone_name=backbone_name, task=task, unlabeled_texts=tuple(unlabeled),
                           labeled=tuple(labeled), candidate_texts=tuple(private_texts + unlabeled),
                           features=CachedFeatures(backbone_name, task, groups, progress), seed=seed,
                           mechanisms=mechanisms, known_samples=known_samples(uploads, seed))


def default_public_knowledge(backbone_name: str, task: TaskSpec | InstructionTask, uploads: list[tuple[str, str]],
                             seed: int = 0, progress: bool = True, public_file: str | None = None,
                             mechanisms: tuple[str, ...] | None = None) -> PublicKnowledge:
    """Public knowledge for attacking one run (`uploads`: its (sample id, text) pairs):
    `public_file` (its rows the run uploaded left out), or a built-in task's unused rows."""
    if public_file is None and task.name not in BUILTIN_TASKS:
        raise UserInputError(f"no built-in public data for task {task.name!r}: pass --public-file (a data file "
                             "with the task's columns)")
    used = [Example(text=text, label=0) for _, text in uploads]
    return knowledge(backbone_name, task, public_data(task, public_file, None, used, seed), uploads, seed, progress,
                     mechanisms=mechanisms)
