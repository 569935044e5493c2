"""A deployable fine-tuned model: a reference to the public backbone plus its side output.

The side output is the side network φ (plain and DP runs) or the ridge head F(A)·W of
the CKKS mode; `head_kind` in the metadata says which (files without it hold φ).
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

from protocol.codec import decode, encode
from protocol.errors import ProtocolError, UserInputError
from protocol.files import write_atomic
from protocol.ridge_head import FeatureMap, RidgeHead
from protocol.side_network import AdditiveSideNetwork, network_from_arrays, state_arrays
from protocol.tasks import TaskSpec

FORMAT = "secure-assist-finetuned/1"
SIDE_NETWORK, RIDGE_HEAD = "side_network", "ridge_head"
_RIDGE_TENSORS = ("ridge.mean", "ridge.scale", "ridge.components", "ridge.weights")


@dataclass
class FineTunedModel:
    """Everything the device needs to predict locally: argmax(p_b + side_network(A))."""

    backbone: str
    task: TaskSpec
    layers: tuple[int, ...]
    payload_dtype: str
    side_network: AdditiveSideNetwork | RidgeHead  # φ, or the CKKS mode's ridge head

    @property
    def head_kind(self) -> str:
        """'side_network' (φ) or 'ridge_head' (CKKS mode)."""
        return RIDGE_HEAD if isinstance(self.side_network, RidgeHead) else SIDE_NETWORK


def _digest(state: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(state[name])
        digest.update(name.encode() + b"\0" + str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_finetuned(path: Path | str, model: FineTunedModel) -> None:
    """Write the model file atomically."""
    side = model.side_network
    if isinstance(side, RidgeHead):
        state = dict(zip(_RIDGE_TENSORS, (side.feature_map.mean, side.feature_map.scale, side.feature_map.components,
                                          side.weights)))
        architecture = {"n_features": int(side.feature_map.components.shape[0]), "n_classes": side.n_classes}
    else:
        state, architecture = state_arrays(side), asdict(side.shape)
    task = asdict(model.task)
    metadata = {
        "format": FORMAT,
        "backbone": model.backbone,
        "task": json.dumps({**task, "label_words": list(task["label_words"]), "labels": list(task["labels"])}),
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
        task = json.loads(metadata["task"])
        return FineTunedModel(
            backbone=metadata["backbone"],
            task=TaskSpec(**{**task, "label_words": tuple(task["label_words"]), "labels": tuple(task["labels"])}),
            layers=tuple(json.loads(metadata["layers"])),
            payload_dtype=metadata["payload_dtype"],
            side_network=_side_output(state, metadata),
        )
    except (ProtocolError, KeyError, ValueError, TypeError) as exc:
        raise UserInputError(f"{path} is not a valid fine-tuned model: {exc}") from exc


def _side_output(state: dict[str, np.ndarray], metadata: dict[str, str]) -> AdditiveSideNetwork | RidgeHead:
    """φ or the ridge head, as the metadata names it (φ for files written before the CKKS mode)."""
    kind = metadata.get("head_kind", SIDE_NETWORK)
    if kind == SIDE_NETWORK:
        return network_from_arrays(state, json.loads(metadata["architecture"]))
    if kind != RIDGE_HEAD or set(state) != set(_RIDGE_TENSORS):
        raise ValueError(f"unknown side output {kind!r} with tensors {sorted(state)}")
    mean, scale, components, weights = (state[name] for name in _RIDGE_TENSORS)
    if mean.shape != scale.shape or components.shape[1:] != mean.shape:
        raise ValueError("inconsistent ridge feature map shapes")
    return RidgeHead(FeatureMap(mean=mean, scale=scale, components=components), weights)
