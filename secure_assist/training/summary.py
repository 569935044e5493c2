"""The typed summary of one fine-tuning run, whatever the mode and channel.

`to_json` gives the JSON object `finetune` and `device` print: the keys of earlier
versions are kept (a generation run has the generation metrics instead of the accuracies) (schema 2 adds `summary_schema`, `mode` and `device_train_seconds`;
a number the device cannot know, such as the server's seconds over the network, is null)
and a mode's own numbers (e.g. the CKKS mode's `he_*` keys) sit beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SUMMARY_SCHEMA = 2


@dataclass(frozen=True)
class RunSummary:
    """Utility, cost and where everything was written, for one run."""

    config: dict[str, Any]
    mode: str
    head: str  # the deployed side output's kind
    n_train: int  # samples uploaded (or trained on, device_local)
    n_eval: int
    mechanisms: list[dict[str, Any]]
    safeguard: dict[str, Any] | None
    # Utility on the evaluation split, from the task kind: zero_shot_accuracy and accuracy
    # (classification), the answer NLL, token accuracy and ROUGE-L keys (generation).
    metrics: dict[str, Any]
    epochs: int
    epochs_done: int
    final_train_loss: float | None
    bytes_up: int  # on the wire; 0 when nothing leaves the device
    bytes_down: int
    upload_bytes_per_sample: float  # the run's upload bytes, every round's, per uploaded sample
    upload_wire_bytes_this_session: int
    reconnects: int
    # Forward passes of the uploads and the safeguard's validation (also those reused from the device cache) + the
    # mode's device work; scoring the evaluation split is not counted.
    device_seconds: float
    device_train_seconds: float  # training on the device (device_local)
    device_forwards: int
    device_forwards_reused: int
    device_seconds_epoch1: float
    device_forwards_epoch1: int
    device_forwards_after_epoch1: int
    device_peak_rss_mib: float
    server_seconds: float | None  # None when the server is not in this process
    server_seconds_per_cached_epoch: float | None
    cache_samples: int
    cache_reads: int
    model_file: str
    server_view: str | None  # None when the server is elsewhere or there is none
    ground_truth: str
    details: dict[str, Any] = field(default_factory=dict)
    received_model_file: str | None = None  # the side output before the safeguard (keep_received_model)
    # Boosting rounds (rounds > 1; absent from the JSON otherwise): one record per round, its safeguard decision,
    # bytes, seconds and server view; the totals above sum the rounds.
    rounds: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-able summary: every field, the task's metrics after `safeguard` (where the
        accuracy keys always stood) and the mode's details flattened beside them."""
        values = asdict(self)
        details, metrics = values.pop("details"), values.pop("metrics")
        if values["rounds"] is None:  # a one-round run's summary is what it always was
            del values["rounds"]
        ordered: dict[str, Any] = {"summary_schema": SUMMARY_SCHEMA}
        for key, value in values.items():
            ordered[key] = value
            if key == "safeguard":
                ordered.update(metrics)
        return {**ordered, **details}
