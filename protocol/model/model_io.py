"""A deployable fine-tuned model: a reference to the public backbone plus its side output.

The task is a classification task or a generation task (its record names its kind).

The side output is any registered `protocol.model.side_output.SideOutput` (the side network φ,
the CKKS mode's ridge head); `head_kind` in the metadata names its kind (files without it
hold φ).
Saved as one safetensors file whose metadata names the backbone, the task, the
layers and payload dtype the side output reads, and a SHA-256 over every tensor;
loading recomputes the digest and refuses a file that does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from protocol.wire.codec import decode, encode
from protocol.errors import ProtocolError, UserInputError
from protocol.files import write_atomic
from protocol.model.side_network import AdditiveSideNetwork
from protocol.data.instructions import GENERATION_TASK, InstructionTask
from protocol.model.side_output import SideOutput, side_output_from_arrays
from protocol.data.tasks import TaskSpec

FORMAT = "secure-assist-finetuned/1"


@dataclass
class FineTunedModel:
    """Everything the device needs to predict locally: argmax(p_b + side_network(A))."""

    backbone: str
    task: TaskSpec | InstructionTask
    layers: tuple[int, ...]
    payload_dtype: str
    side_network: SideOutput  # φ, or another mode's side output (e.g. the CKKS ridge head)

    @property
    def head_kind(self) -> str:
        """The side output's registered kind."""
        return self.side_network.KIND


def _digest(state: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(state[name])
        digest.update(name.encode() + b"\0" + str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def task_record(task: TaskSpec | InstructionTask) -> dict[str, object]:
    """The model file's JSON record of a task; a generation task names its kind."""
    if isinstance(task, InstructionTask):
        return task.to_json()
    record = asdict(task)
    return {**record, "label_words": list(record["label_words"]), "labels": list(record["labels"])}


def task_from_record(record: dict[str, object]) -> TaskSpec | InstructionTask:
    """The task of a model file (records without a kind are classification tasks)."""
    record = dict(record)
    if record.pop("kind", None) == GENERATION_TASK:
        return InstructionTask(**record)
    return TaskSpec(**{**record, "label_words": tuple(record["label_words"]), "labels": tuple(record["labels"])})


def save_finetuned(path: Path | str, model: FineTunedModel) -> None:
    """Write the model file atomically."""
    state, architecture = model.side_network.to_arrays()
    metadata = {
        "format": FORMAT,
        "backbone": model.backbone,
        "task": json.dumps(task_record(model.task)),
        "layers": json.dumps(list(model.layers)),
        "payload_dtype": model.payload_dtype,
        "head_kind": model.head_kind,
        "architecture": json.dumps(architecture),
        "sha256": _digest(state),
    }
    write_atomic(Path(path), encode(state, metadata))


def load_finetuned(path: Path | str) -> FineTunedModel:
    """Read and verify a model file written by `save_finetuned`."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model file {path} does not exist")
    try:
        state, metadata = decode(path.read_bytes())
        if metadata.get("format") != FORMAT:
            raise UserInputError(f"{path} is not a secure-assist fine-tuned model ({FORMAT})")
        if _digest(state) != metadata.get("sha256"):
            raise UserInputError(f"{path} failed its integrity check (SHA-256 mismatch): the file is corrupt")
        return FineTunedModel(
            backbone=metadata["backbone"],
            task=task_from_record(json.loads(metadata["task"])),
            layers=tuple(json.loads(metadata["layers"])),
            payload_dtype=metadata["payload_dtype"],
            side_network=side_output_from_arrays(metadata.get("head_kind", AdditiveSideNetwork.KIND), state,
                                                 json.loads(metadata["architecture"])),
        )
    except (ProtocolError, KeyError, ValueError, TypeError) as exc:
        raise UserInputError(f"{path} is not a valid fine-tuned model: {exc}") from exc

