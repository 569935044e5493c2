"""Typed, frozen run configurations; unknown keys and wrong types are errors."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, TypeVar

from protocol.data.instructions import GENERATION_TASK
from protocol.model.names import DEFAULT_BACKBONE
from protocol.errors import UserInputError
from protocol.server.training_settings import ServerTraining
from secure_assist.devices.partition import Partition
from protocol.wire.messages import MAX_ROUNDS, POOL_NAME
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS, parameter_fields

T = TypeVar("T")

# Run settings that decide whether a run works but never what it computes: the config fingerprints
# (audit, compare points) leave them out, so adding one keeps earlier fingerprints valid and saved
# sweep points reusable.
RESULT_NEUTRAL_FIELDS = ("skip_invalid_rows", "keep_received_model")
# Run settings added after fingerprints were first saved, with the value that computes what runs computed before
# them: a fingerprint leaves such a field out at that value (earlier fingerprints and saved points stay valid) and
# hashes it otherwise (a run with --rounds 2 is another point).
LATER_FIELDS: dict[str, Any] = {"rounds": 1}

# Boosting rounds (secure_assist.training.rounds): at most MAX_ROUNDS (the protocol's bound), only for PAE on one
# device, per task kind its PAE mode and the mechanisms that send the targets plain or through a Gaussian mechanism
# (whose accounting composes rounds).
ROUNDS_MODES = {"classification": "side_network", "generation": "generation"}
ROUNDS_MECHANISMS = {"classification": ("none", "gaussian"), "generation": ("none", "gaussian_r")}


def option(default: Any, text: str, **extra: Any) -> Any:
    """A config field with its CLI help (flags are generated from the fields)."""
    return field(default=default, metadata={"help": text, **extra})


@dataclass(frozen=True)
class RunSettings:
    """The fields of a fine-tuning run other than the mechanisms' own parameters."""

    model: str = option(DEFAULT_BACKBONE, "backbone: 'smollm2-135m' (embedded), a tiny-* test model, a local path "
                                           "or a cached hub id")
    task: str = option("sst2", "built-in task name (sst2), 'custom' (with --train-file, --template, "
                                "--label-words, --labels) or 'generation' (instruction data with free-text "
                                "answers, with --train-file)")
    train_file: str | None = option(None, "training data file (CSV, TSV or JSONL)")
    eval_file: str | None = option(None, "evaluation data file (default: a held-out split of --train-file)")
    # Off: the first bad row of a data file is an error naming FILE:LINE. On: each bad row is
    # reported on stderr and left out, and reports' data provenance counts them. What a run that
    # works without it computes stays the same, so the fingerprints leave it out (RESULT_NEUTRAL_FIELDS).
    skip_invalid_rows: bool = option(False, "leave out invalid rows of --train-file and --eval-file (each reported "
                                            "on stderr as FILE:LINE: reason) instead of stopping at the first")
    template: str | None = option(None, "prompt template: {text} for classification; {instruction} and {input} "
                                        "for generation (default there: the backbone's chat template)")
    label_words: tuple[str, ...] | None = option(None, "label words separated by '|', e.g. ' negative| positive' "
                                                        "(each one token)", separator="|")
    labels: tuple[str, ...] | None = option(None, "label values as they appear in the data, comma-separated, in "
                                                   "label-word order")
    text_column: str = option("sentence", "column holding the text")
    label_column: str = option("label", "column holding the label")
    instruction_column: str = option("instruction", "column holding the instruction (generation)")
    input_column: str = option("input", "column holding the optional input (generation)")
    output_column: str = option("output", "column holding the answer (generation)")
    max_answer_tokens: int = option(32, "answer tokens trained and generated per sample (generation)")
    rouge_samples: int = option(100, "evaluation prompts whose greedy generations are scored with ROUGE-L "
                                     "(generation)")
    # secure_assist.canaries: the secret-sharer test of what the deployed model memorized.
    canaries: int = option(0, "random secrets planted in the training answers, whose exposure the summary and the "
                              "audit report (generation)")
    canary_repetitions: int = option(1, "training samples each canary is planted in (generation)")
    train_samples: int | None = option(2000, "number of training samples (seed-fixed subset)")
    eval_samples: int | None = option(None, "number of evaluation samples (default: all)")
    # Many devices (secure_assist.devices): the training subset is split over `devices` devices, seed-fixed, and
    # this run is device `device_index`'s (its hold-out split, uploads and safeguard come from its share alone).
    devices: int = option(1, "devices the training samples are split over; this run is one of them")
    partition: str = option("iid", "how the training samples are split over --devices: iid, dirichlet:ALPHA "
                                    "(label skew, e.g. 0.5), dirichlet_equal:ALPHA (label skew at equal device "
                                    "sizes) or shards:K (K label-sorted shards each)")
    device_index: int = option(0, "which device's share this run holds (0 .. devices-1)")
    flip_labels: bool = option(False, "flip every training label of this device (a poisoning device; "
                                      "classification)")
    epochs: int = option(20, "training epochs (epoch 1 streams the uploads, later ones run from the cache)")
    layers: tuple[int, ...] | None = option(None, "comma-separated backbone layers to upload (default: all)")
    payload_dtype: str = option("float16", "activation dtype on the wire: float16 or float32")
    device_batch_size: int = option(16, "device forward batch size")
    # Side-network training: the defaults are the server's own (protocol.server.side_tuning.ServerTraining).
    rank: int = option(ServerTraining.rank, "side-network adapter rank")
    learning_rate: float = option(ServerTraining.learning_rate, "AdamW learning rate of the side network's gates "
                                                                 "and head")
    weight_decay: float = option(ServerTraining.weight_decay, "AdamW decoupled weight decay")
    adapter_lr_scale: float = option(ServerTraining.adapter_lr_scale, "adapters learn at this multiple of "
                                                                       "--learning-rate (they overfit small data)")
    cosine_decay: bool = option(ServerTraining.cosine_decay, "decay the learning rate to zero over the cached "
                                                              "epochs (cosine)")
    server_batch_size: int = option(ServerTraining.batch_size, "cached-epoch batch size of the side network")
    seed: int = option(0, "seed of the data subsets, the hold-out split and the side network")
    workdir: str = option("runs/finetune", "directory for the server view, cache and fine-tuned model")
    # The training mode (protocol.modes.registry.MODES); None: the first one every mechanism supports
    # (side_network, or ckks_ridge with he_ckks).
    mode: str | None = option(None, "training mode (side_network, ckks_ridge, device_local, generation, "
                                     "generation_local, pooled; default: the one the task and mechanisms imply)")
    # The pool a `pooled` device joins on the server (protocol.modes.pooled); "": a pool of its own.
    pool: str = option("", "pool to join with --mode pooled (the server hosts it, the key directory lets the "
                           "device join it); default: a pool of its own")
    # Privacy mechanisms (secure_assist.mechanism_parameters.MECHANISM_PARAMETERS), composed in stage order; their
    # parameters are the generated fields below.
    mechanism: tuple[str, ...] = option(("none",), "comma-separated privacy mechanisms, composed: "
                                         + ", ".join(MECHANISM_PARAMETERS))
    mechanism_seed: int | None = option(None, "seed of the mechanisms' randomness; None: OS entropy")
    # Share of the training data the device holds out for the safeguard, every run (unprotected 'none' included);
    # None: secure_assist.training.safeguard.VALIDATION_SHARE (0.2) for classification, 0.1 for generation (the
    # device picks the correction's scale there). At least safeguard.MIN_VALIDATION samples, up to half the device's.
    safeguard_fraction: float | None = option(None, "share of the training data held out on the device for the "
                                                     "safeguard (default 0.2, 0.1 for generation; at least 10 "
                                                     "samples up to half); 0: no safeguard (deploy the side "
                                                     "output as trained)")
    # A curious device keeps what the server (or the pool's aggregation) sent beside what its safeguard lets it
    # deploy: the cross-device membership attacker of a many-device audit attacks that copy. It writes one more file
    # and changes nothing computed, so the fingerprints leave it out (RESULT_NEUTRAL_FIELDS).
    keep_received_model: bool = option(False, "also save the side output as received, before the safeguard "
                                              "(received_model.safetensors: what a curious device holds)")
    # Boosting rounds (secure_assist.training.rounds): round k >= 2 re-uploads the same activations with Δ (generation:
    # r) refreshed at the deployed sum; the device rereads the passes it holds (on whenever rounds > 1).
    rounds: int = option(1, f"boosting rounds of PAE (1..{MAX_ROUNDS}): each round after the first uploads Δ "
                            "(generation: r) refreshed at the model deployed so far and adds the side output its "
                            "safeguard keeps (mode side_network with mechanism none or gaussian, or mode generation "
                            "with none or gaussian_r)")
    # Keep the device's forward passes in its own disk cache and reuse them on the same
    # data (audits and sweeps run many variants over one dataset); outputs are identical.
    reuse_forwards: bool = option(False, "keep the device's forward passes in its disk cache and reuse them on "
                                          "the same data")

    def __post_init__(self) -> None:
        positive = ("epochs", "device_batch_size", "rank", "server_batch_size", "max_answer_tokens", "rouge_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("train_samples", "eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"{name} must be at least 1 (or omitted for all), got {value}")
        if self.canaries < 0 or self.canary_repetitions < 1:
            raise UserInputError(f"canaries must be at least 0 and canary_repetitions at least 1, got "
                                 f"{self.canaries} and {self.canary_repetitions}")
        if self.canaries and self.task != GENERATION_TASK:
            raise UserInputError(f"canaries are planted in generation answers: use them with --task generation, "
                                 f"not --task {self.task}")
        if self.devices < 1 or not 0 <= self.device_index < self.devices:
            raise UserInputError(f"device_index must be in 0 .. devices-1 and devices at least 1, got device_index "
                                 f"{self.device_index} of {self.devices} devices")
        Partition.parse(self.partition)
        if self.flip_labels and self.task == GENERATION_TASK:
            raise UserInputError("flip_labels flips class labels: it needs a classification task")
        if self.safeguard_fraction is not None and not 0 <= self.safeguard_fraction < 1:
            raise UserInputError(f"safeguard_fraction must be in [0, 1), got {self.safeguard_fraction}")
        if self.pool and (self.mode != "pooled" or not POOL_NAME.fullmatch(self.pool)):
            raise UserInputError(f"pool {self.pool!r} needs --mode pooled and a name of 1-64 of [A-Za-z0-9_.-]")
        self.check_rounds()
        self.server_training()  # validates the server's settings now, not after the forward passes
        check_mechanism_parameters(self)

    def check_rounds(self) -> None:
        """`rounds` in 1..MAX_ROUNDS, and more than one only where rounds are implemented: a one-line error."""
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise UserInputError(f"rounds must be in 1..{MAX_ROUNDS}, got {self.rounds}")
        if self.rounds == 1:
            return
        kind = "generation" if self.task == GENERATION_TASK else "classification"
        if self.mode not in (None, ROUNDS_MODES[kind]):
            raise UserInputError(f"--rounds > 1 runs {kind} with mode {ROUNDS_MODES[kind]} only, not {self.mode}")
        unsupported = [name for name in self.mechanism if name not in ROUNDS_MECHANISMS[kind]]
        if unsupported:
            raise UserInputError(f"--rounds > 1 runs {kind} with mechanism {' or '.join(ROUNDS_MECHANISMS[kind])} "
                                 f"only, not {','.join(unsupported)}")
        if self.devices > 1:
            raise UserInputError(f"--rounds > 1 runs on one device only, not --devices {self.devices}")

    def server_training(self) -> ServerTraining:
        """The server's side-network settings for this run."""
        return ServerTraining(rank=self.rank, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                              adapter_lr_scale=self.adapter_lr_scale, cosine_decay=self.cosine_decay,
                              batch_size=self.server_batch_size, seed=self.seed)


def result_values(values: dict[str, Any]) -> dict[str, Any]:
    """The entries of a config's `asdict` that decide its results, as the fingerprints hash them:
    RESULT_NEUTRAL_FIELDS left out, and each of LATER_FIELDS left out at its earlier value."""
    return {k: v for k, v in values.items()
            if k not in RESULT_NEUTRAL_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def check_mechanism_parameters(config: Any) -> None:
    """Every mechanism parameter's range (of every mechanism, chosen or not), from a generated
    config: a bad value is an error before any work, whichever command took it."""
    for parameters in MECHANISM_PARAMETERS.values():
        parameters(**{f.name: getattr(config, f.name) for f in fields(parameters)})


def mechanism_config_fields(defined: set[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """make_dataclass entries for every mechanism parameter not in `defined`, with the
    mechanism's own type, default and help: adding a parameter to a mechanism's dataclass
    adds the config key and the CLI flags of every command that runs mechanisms."""
    entries = []
    for item in parameter_fields():
        if item.name in defined:
            continue
        owner = next(p for p in MECHANISM_PARAMETERS.values() if item.name in {f.name for f in fields(p)})
        kind = typing.get_type_hints(owner)[item.name]
        entries.append((item.name, kind, field(default=item.default, metadata=item.metadata)))
    return entries


def with_mechanism_parameters(base: type, name: str, doc: str) -> type:
    """A frozen dataclass `name`: the fields of `base` plus every mechanism parameter that
    `base` does not define itself."""
    return make_dataclass(name, mechanism_config_fields({f.name for f in fields(base)}), bases=(base,), frozen=True,
                          namespace={"__doc__": doc, "__module__": base.__module__})


FinetuneConfig = with_mechanism_parameters(
    RunSettings, "FinetuneConfig", "Everything a fine-tuning run depends on: `RunSettings` plus every mechanism's "
                                   "parameters (generated from the mechanisms' parameter dataclasses).")


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a simple annotation (str, int, float, None, tuple[X, ...] and unions)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def config_from_mapping(cls: type[T], values: dict[str, Any]) -> T:
    """Build a config dataclass from a mapping; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserInputError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    converted = {}
    for name, value in values.items():
        if not _accepts(hints[name], value):
            raise UserInputError(f"{cls.__name__}.{name}: {value!r} is not a valid {hints[name]}")
        converted[name] = tuple(value) if isinstance(value, list) else value
    return cls(**converted)


def load_config_file(cls: type[T], path: Path | str, overrides: dict[str, Any]) -> T:
    """A config from a JSON file, with explicit overrides (e.g. from the command line) on top."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserInputError(f"config file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: a config file holds one JSON object")
    return config_from_mapping(cls, {**values, **overrides})
