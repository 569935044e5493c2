"""The one run path of every training mode, over any channel.

Device: data and hold-out split, one inference-only forward pass per sample, the
mechanisms, a resumable epoch-1 upload; then the mode finishes the training (the
server trains φ, or fits an encrypted head; `device_local` trains on the device) and
hands back a side output, which the device restores (mechanisms), safeguards,
evaluates and saves. What depends on the task (data, the device's passes, the safeguard's
metric, the evaluation) comes from its kind (`secure_assist.task_kinds`: classification or
generation). `finetune` runs it in process, `device` against `serve` over TLS,
and `audit` / `compare` through `finetune`: the same code for all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from protocol.wire.channel import Channel, InProcessChannel
from protocol.device.forward_device import ForwardDevice
from protocol.errors import UserInputError
from protocol.wire.messages import Hello, ModeAccepted, expect
from protocol.model.model_io import FineTunedModel, save_finetuned
from protocol.model.side_output import SideOutput
from secure_assist.config import FinetuneConfig
from secure_assist.task_kinds import task_kind
from secure_assist.mechanisms import MECHANISMS, MechanismChain
from protocol.modes.base import TrainingMode, TrainOutcome
from protocol.modes.registry import MODES, get_mode, server_modes
from protocol.modes.host import ModeHost
from secure_assist.training.resources import PeakMemory
from secure_assist.training.safeguard import validation_count
from secure_assist.training.summary import RunSummary
from secure_assist.training.upload import run_key, upload_resumable
from secure_assist.training.workdir import (
    DEVICE_DIR, GROUND_TRUTH_FILE, LOCAL_TRAINING_DIR, MODEL_FILE, RECEIVED_MODEL_FILE, SERVER_DIR, prepare_workdir,
    server_dir,
)

E = TypeVar("E")


def resolve_mode(mode: str | None, mechanisms: tuple[str, ...], task_kind: str = "classification") -> TrainingMode:
    """The configured mode, or (None) the first uploading mode of the task kind that every
    mechanism supports (`side_network`, `ckks_ridge` for `he_ckks`; `generation`)."""
    if mode is not None:
        chosen = get_mode(mode)
        if chosen.task_kind != task_kind:
            raise UserInputError(f"training mode {mode!r} trains {chosen.task_kind} tasks, not {task_kind} ones")
        return chosen
    known = [MECHANISMS[n] for n in mechanisms if n in MECHANISMS]
    for candidate in server_modes():
        if MODES[candidate].task_kind == task_kind and all(cls.supports(MODES[candidate]) for cls in known):
            return MODES[candidate]
    raise UserInputError(f"no {task_kind} training mode supports every mechanism of {list(mechanisms)}")


def build_mechanisms(config: FinetuneConfig, mode: TrainingMode | None = None) -> MechanismChain:
    """The configured protections for the run's mode; every configuration error (unknown
    names, missing parameters, a mechanism the mode does not support, a mode without the
    stage it needs, a mode of another task kind) surfaces here, before anything is computed or sent."""
    mode = mode or resolve_mode(config.mode, config.mechanism, task_kind(config).name)
    chain = MechanismChain(config.mechanism, asdict(config), config.mechanism_seed, mode)
    if mode.required_stage is not None and chain.stage(mode.required_stage) is None:
        providers = [name for name, cls in MECHANISMS.items() if cls.stage == mode.required_stage]
        raise UserInputError(f"training mode {mode.name!r} needs a mechanism of stage {mode.required_stage!r} "
                             f"({', '.join(providers)}) in --mechanism")
    return chain


def validation_share(config: FinetuneConfig) -> float:
    """The share of the training data the device holds out for its safeguard (0: the safeguard is off)."""
    share = config.safeguard_fraction
    return task_kind(config).validation_fraction(config) if share is None else share


def hold_out_indices(n_train: int, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(indices to upload, indices of the device's validation split), seed-fixed; the split's size is
    `safeguard.validation_count` (at least `MIN_VALIDATION` samples up to half the device's)."""
    cut = validation_count(n_train, validation_share(config))
    order = np.random.default_rng(config.seed).permutation(n_train)
    return order[cut:], order[:cut]


def hold_out(train: list[E], config: FinetuneConfig) -> tuple[list[E], list[E] | None]:
    """(examples to upload, the device's validation split for the safeguard; None: the safeguard is off)."""
    upload, validation = hold_out_indices(len(train), config)
    return [train[i] for i in upload], [train[i] for i in validation] if validation_share(config) else None


def save_model(device: ForwardDevice, config: FinetuneConfig, side: SideOutput, workdir: Path,
               name: str = MODEL_FILE) -> Path:
    """The deployable model file `workdir/name`: the backbone's name, the task, the layers and the side output."""
    model_path = workdir / name
    save_finetuned(model_path, FineTunedModel(backbone=config.model, task=device.task, layers=device.layers,
                                              payload_dtype=config.payload_dtype, side_network=side))
    return model_path


@dataclass
class StartedRun:
    """A device's run once its epoch 1 is uploaded: what training and deployment need of it.

    `run_training` is `start_run`, `train_side`, `deploy`; a caller that coordinates several
    devices (a pool, federated averaging) calls the steps itself, e.g. every device's uploads
    before any device's training."""

    config: FinetuneConfig
    mode: TrainingMode
    mechanisms: MechanismChain
    device: ForwardDevice
    channel: Channel
    host: ModeHost | None  # the in-process server role (None: the server is elsewhere)
    upload_set: list[Any]
    validation: list[Any]
    evaluate: list[Any]
    upload_peak_mib: float
    uploaded_bytes: int
    forwards_epoch1: int
    seconds_epoch1: float
    server_seconds_epoch1: float | None
    train_peak_mib: float = 0.0
    server_seconds: float | None = None

    @property
    def workdir(self) -> Path:
        """The run's work directory."""
        return Path(self.config.workdir)

    def close(self) -> None:
        """Release the in-process server role's files."""
        if self.host is not None:
            self.host.close()


def start_run(config: FinetuneConfig, channel: Channel | None = None, progress: bool = True,
              overwrite: bool = False, on_acknowledged: Callable[[int], None] | None = None) -> StartedRun:
    """Data, hold-out split, device, mechanisms and the resumable epoch-1 upload of `config`.
    `channel` None: the server role runs in this process (in `<workdir>/server`, or on the device
    for a mode that uploads nothing) on a fresh work directory; a given channel (the network):
    the server is elsewhere, and an interrupted deterministic upload in `<workdir>/device` is resumed."""
    torch.manual_seed(config.seed)
    workdir = Path(config.workdir)
    kind = task_kind(config)
    mode = resolve_mode(config.mode, config.mechanism, kind.name)
    mechanisms = build_mechanisms(config, mode)
    task, train, evaluate = kind.data(config)
    upload_set, validation = hold_out(train, config)
    host = None
    if channel is None:
        prepare_workdir(workdir, overwrite)
        # Boosting round k's server state (a Hello naming round k) goes beside round 1's, where the audit reads it.
        host = ModeHost(workdir / (SERVER_DIR if mode.uploads else LOCAL_TRAINING_DIR), (mode.name,),
                        config.server_training(), round_dir=lambda number: workdir / server_dir(number))
        channel = InProcessChannel(host)
    elif not mode.uploads:
        raise UserInputError(f"training mode {mode.name!r} uploads nothing: run it with `secure-assist finetune`")
    try:
        device = kind.make_device(config, task, mechanisms if mode.uploads else None, progress, (train, evaluate))
        kind.check(device, train + evaluate)
        expect(channel.request(Hello(mode=mode.name, pool=config.pool)), ModeAccepted)
        mode.open(channel, device)
        with PeakMemory() as upload_peak:
            upload_resumable(device, channel, upload_set, workdir / DEVICE_DIR, run_key(config, mode.name, upload_set),
                             overwrite, on_acknowledged, resumable=mechanisms.deterministic)
    except BaseException:
        if host is not None:
            host.close()
        raise
    return StartedRun(config=config, mode=mode, mechanisms=mechanisms, device=device, channel=channel, host=host,
                      upload_set=upload_set, validation=validation, evaluate=evaluate,
                      upload_peak_mib=upload_peak.peak_mib, uploaded_bytes=channel.bytes_up,
                      forwards_epoch1=device.forward_samples,
                      seconds_epoch1=device.forward_seconds + device.reused_forward_seconds,
                      server_seconds_epoch1=None if host is None else host.compute_seconds)


def train_side(run: StartedRun) -> TrainOutcome:
    """The mode's training after epoch 1 (the server trains, or the device does for a mode that
    uploads nothing) and the side output it hands back, still as trained (not restored)."""
    with PeakMemory() as train_peak:
        outcome = run.mode.train(run.channel, run.config.epochs, run.mechanisms)
    run.train_peak_mib = train_peak.peak_mib
    if run.host is not None:
        run.server_seconds = run.host.compute_seconds
        outcome.details = {**outcome.details, **run.mode.server_details(run.host.endpoint)}
    return outcome


@dataclass
class Judged:
    """The device's decision on the side output it received: restored, safeguarded, and its costs so far."""

    side: SideOutput  # restored and shrunk (or dropped) in place by the safeguard
    safeguard: dict[str, Any] | None
    received: Path | None  # the side output as received (keep_received_model)
    forwards_after_epoch1: int
    forward_work_seconds: float


def judge(run: StartedRun, outcome: TrainOutcome) -> Judged:
    """Restore the side output (mechanisms) and safeguard it on the device's validation split."""
    config, device = run.config, run.device
    forwards_after_epoch1 = device.forward_samples - run.forwards_epoch1  # expected 0: the server uses its cache
    side = run.mechanisms.restore(outcome.side)  # e.g. wrapped in the device's secret input rotation
    # Saved before the safeguard, which shrinks or drops `side` in place.
    received = save_model(device, config, side, run.workdir, RECEIVED_MODEL_FILE) if config.keep_received_model \
        else None
    safeguard = task_kind(config).safeguard(device, side, run.validation, config.seed)
    # The device's work ends with its deployment decision; scoring the evaluation split is the
    # measurement, not a cost (the references' device seconds exclude it too).
    return Judged(side, safeguard, received, forwards_after_epoch1,
                  device.forward_seconds + device.reused_forward_seconds)


def deploy(run: StartedRun, outcome: TrainOutcome) -> RunSummary:
    """Restore the side output (mechanisms), safeguard it on the device's validation split,
    score it on the evaluation split, save the model file and summarize the run."""
    return finish(run, outcome, judge(run, outcome))


def finish(run: StartedRun, outcome: TrainOutcome, judged: Judged, side: SideOutput | None = None,
           metrics: dict[str, Any] | None = None) -> RunSummary:
    """Score the deployed side output (`judged`'s, or `side`: what boosting rounds built on it) on the
    evaluation split (unless `metrics` already hold its scores), save the model file and summarize the run."""
    config, mode, device, channel, workdir = run.config, run.mode, run.device, run.channel, run.workdir
    side = judged.side if side is None else side
    metrics = task_kind(config).evaluate(device, config, side, run.evaluate) if metrics is None else metrics
    model_path = save_model(device, config, side, workdir)
    server_seconds = run.server_seconds
    # A mode that uploads nothing trains on the device: its "server" time is device time, its bytes no traffic.
    device_train_seconds = 0.0 if mode.uploads else server_seconds
    cached_epochs = max(0, outcome.epochs_done - 1)
    per_cached_epoch = (None if server_seconds is None or not mode.uploads
                        else (server_seconds - run.server_seconds_epoch1) / max(1, cached_epochs))
    uploaded_bytes = run.uploaded_bytes if mode.uploads else 0
    return RunSummary(
        config=asdict(config), mode=mode.name, head=side.KIND, n_train=len(run.upload_set), n_eval=len(run.evaluate),
        mechanisms=run.mechanisms.describe(), safeguard=judged.safeguard, metrics=metrics,
        epochs=config.epochs, epochs_done=outcome.epochs_done, final_train_loss=outcome.final_train_loss,
        bytes_up=channel.bytes_up if mode.uploads else 0, bytes_down=channel.bytes_down if mode.uploads else 0,
        upload_bytes_per_sample=uploaded_bytes / max(1, len(run.upload_set)),
        upload_wire_bytes_this_session=uploaded_bytes,
        reconnects=getattr(channel, "reconnects", 0),
        device_seconds=judged.forward_work_seconds + outcome.device_seconds + device_train_seconds,
        device_train_seconds=device_train_seconds, device_forwards=device.forward_samples,
        device_forwards_reused=device.reused_forwards, device_seconds_epoch1=run.seconds_epoch1,
        device_forwards_epoch1=run.forwards_epoch1, device_forwards_after_epoch1=judged.forwards_after_epoch1,
        device_peak_rss_mib=max(run.upload_peak_mib, 0.0 if mode.uploads else run.train_peak_mib),
        server_seconds=server_seconds if mode.uploads else None, server_seconds_per_cached_epoch=per_cached_epoch,
        cache_samples=outcome.cache_samples, cache_reads=outcome.cache_samples * cached_epochs,
        model_file=str(model_path), server_view=str(workdir / SERVER_DIR) if run.host is not None and mode.uploads
        else None, ground_truth=str(workdir / DEVICE_DIR / GROUND_TRUTH_FILE), details=outcome.details,
        received_model_file=None if judged.received is None else str(judged.received))


def run_training(config: FinetuneConfig, channel: Channel | None = None, progress: bool = True,
                 overwrite: bool = False, on_acknowledged: Callable[[int], None] | None = None) -> RunSummary:
    """Run `config` end to end (`start_run`, `train_side`, `deploy`; with `rounds` > 1, the boosting
    rounds of `secure_assist.training.rounds` between the first round's safeguard and the
    evaluation); see `start_run` for `channel`."""
    from secure_assist.training.rounds import boost, refuse_begun_rounds  # it builds on this module's steps

    if channel is not None:
        refuse_begun_rounds(config)
    run = start_run(config, channel, progress, overwrite, on_acknowledged)
    try:
        outcome = train_side(run)
    finally:
        run.close()
    return deploy(run, outcome) if config.rounds == 1 else boost(run, outcome)
