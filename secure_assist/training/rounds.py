"""Boosting rounds of PAE (`FinetuneConfig.rounds`), for classification and generation, in process or
against `serve`.

Round 1 is the run itself: `start_run`, `train_side`, and the device's `judge` (restore, then
safeguard). Round k >= 2: the device refreshes its targets at what it deploys so far, S_{k−1} being
the sum of the earlier rounds' side outputs at the factors their safeguards chose (classification:
Δ_k = onehot(y) − (p_b + S_{k−1}(A)); generation: r_t = W_Uᵀ(onehot(y_t) − softmax(z_t + W_U S_{k−1,t}))),
from the passes it already holds (classification: its forward cache; generation: its passes kept in
memory, `protocol.modes.generation.answer_cache`; both on whenever rounds > 1: no backbone pass);
sends the refreshed targets (under round 1's sample ids, without A: `RefreshedTargets`) through the run's
mechanism chain on a fresh connection whose Hello names round k, so the server opens a fresh role for it
(`protocol.modes.host`: in process in `<workdir>/server_round<k>`; on `serve` in `round<k>/` of the
device's namespace), which trains a new side output for `epochs`; fetches and restores it; and its
safeguard judges it against p_b + S_{k−1}, shrinking or dropping it. A dropped round ends the rounds:
the next one would train on the same targets. The deployed model is the sum of the kept rounds
(`SummedSide`): the evaluation split scores it after every round (each record's `eval_metrics`; the
last are the run's `metrics`), and it is saved once at the end. Each round's record is written to
`<workdir>/rounds.jsonl` as the round ends, so a stopped run keeps them. The offline measurement of
exactly this for classification is `benchmarks/classification_rounds.py`.

States once *(choice)*: a round sends only the refreshed targets; its server role pairs them with the
states it holds from round 1 and carries them out as that upload (`carried_out_as`: admitted under
the same quotas, recorded in the round's view as the upload it stands for, cached in the round's own
state, since the per-device cache never replaces a value it holds). Each round's bytes are in the
summary's `rounds` records and in its totals. Over the network a begun round is not resumed: a device
that finds a round begun in its work directory refuses before it connects.

Privacy: each round releases every sample's targets once more, through the run's own chain (`none`,
or `gaussian` / `gaussian_r`, calibrated for all R releases: `secure_assist.mechanisms.delta`), whose
generators carry on from round to round: every round draws fresh noise.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from protocol.errors import UserInputError
from protocol.model.side_output import SideOutput
from protocol.model.summed_side import SummedSide
from protocol.modes.base import TrainOutcome
from protocol.wire.messages import Hello, ModeAccepted, expect
from secure_assist.config import FinetuneConfig
from secure_assist.task_kinds import task_kind
from secure_assist.training.resources import PeakMemory
from secure_assist.training.run import StartedRun, finish, judge, train_side
from secure_assist.training.summary import RunSummary
from secure_assist.training.workdir import (DEVICE_DIR, ground_truth_file, ground_truth_ids, server_dir,
                                           write_ground_truth, write_round_records)


def refuse_begun_rounds(config: FinetuneConfig) -> None:
    """Before a network run connects: refuse a work directory that already began a round k >= 2 against the
    server. That round's server state holds the first attempt's targets and training, which a second attempt
    (fresh noise under a randomized mechanism) would contradict."""
    begun = [k for k in range(2, config.rounds + 1)
             if (Path(config.workdir) / DEVICE_DIR / ground_truth_file(k)).exists()]
    if begun:
        raise UserInputError(f"{config.workdir} already began boosting round {begun[0]} against this server, whose "
                             "round state cannot be resumed: start over with a fresh --workdir and device identity")


def boost(run: StartedRun, outcome: TrainOutcome) -> RunSummary:
    """Round 1's decision on `outcome`, rounds 2..R on top of it, and the summary of the deployed sum:
    the totals (bytes, uploads, server and device seconds, cache reads) sum the rounds, the peak memory is
    the highest of theirs, and `rounds` lists them."""
    judged = judge(run, outcome)
    records = [{"round": 1, "safeguard": judged.safeguard, "bytes_up": run.channel.bytes_up,
                "bytes_down": run.channel.bytes_down, "upload_bytes": run.uploaded_bytes,
                "server_seconds": run.server_seconds,
                "device_seconds": judged.forward_work_seconds + outcome.device_seconds,
                "device_forwards": run.device.forward_samples, "device_peak_rss_mib": run.upload_peak_mib,
                "epochs_done": outcome.epochs_done,
                "final_train_loss": outcome.final_train_loss, "cache_reads": _cache_reads(outcome),
                "server_view": None if run.host is None else str(run.workdir / server_dir(1)),
                "ground_truth": str(run.workdir / DEVICE_DIR / ground_truth_file(1))}]
    parts = [judged.side]
    metrics = records[0]["eval_metrics"] = scored(run, parts)
    write_round_records(run.workdir, records)
    for number in range(2, run.config.rounds + 1):
        if _dropped(records[-1]):
            # The dropped round left the deployed sum, hence the next round's targets, as they were: every later
            # round would train on the same signal again (and release it again), so the rounds stop here.
            records[-1]["stopped"] = f"rounds {number}..{run.config.rounds} not run: round {number - 1} was dropped"
            write_round_records(run.workdir, records)
            break
        part, record = boost_round(run, number, SummedSide(parts))
        records.append(record)
        if not _dropped(record):  # a dropped part adds nothing, and leaves the deployed sum's scores as they were
            parts.append(part)
            metrics = scored(run, parts)
        record["eval_metrics"] = metrics
        write_round_records(run.workdir, records)  # a run stopped in a later round keeps this one
    summary = finish(run, outcome, judged, SummedSide(parts), metrics)
    uploaded = sum(r["upload_bytes"] for r in records)
    return replace(summary, bytes_up=sum(r["bytes_up"] for r in records),
                   bytes_down=sum(r["bytes_down"] for r in records), upload_wire_bytes_this_session=uploaded,
                   upload_bytes_per_sample=uploaded / max(1, summary.n_train),
                   server_seconds=_total(r["server_seconds"] for r in records),
                   device_seconds=summary.device_seconds + sum(r["device_seconds"] for r in records[1:]),
                   cache_reads=sum(r["cache_reads"] for r in records),
                   device_peak_rss_mib=max(r["device_peak_rss_mib"] for r in records), rounds=records)


def scored(run: StartedRun, parts: list[SideOutput]) -> dict[str, Any]:
    """The evaluation split's scores of the sum deployed after a round (a measurement, not the device's cost:
    its seconds are in no round's record); the last one is the run's `metrics`."""
    return task_kind(run.config).evaluate(run.device, run.config, SummedSide(parts), run.evaluate)


def boost_round(run: StartedRun, number: int, deployed: SideOutput) -> tuple[SideOutput, dict[str, Any]]:
    """Round `number` on top of `deployed` (p_b + deployed is the model to beat): its side output,
    restored and safeguarded (shrunk or dropped in place), and its record for the summary."""
    config, device, mode, host = run.config, run.device, run.mode, run.host
    session = replace(run, channel=run.channel.reopen())  # in process: the run's host opens round `number`
    forwards, started = device.forward_samples, time.perf_counter()
    try:
        expect(session.channel.request(Hello(mode=mode.name, pool=config.pool, round=number)), ModeAccepted)
        mode.open(session.channel, device)
        with PeakMemory() as upload_peak:
            upload_refreshed(session, number, deployed)
        # In process the server answers inside the device's requests: its seconds are not the device's.
        upload_seconds = time.perf_counter() - started - (0.0 if host is None else host.compute_seconds)
        upload_bytes = session.channel.bytes_up
        round_outcome = train_side(session)
    finally:
        session.close()
        session.channel.close()
    judging = time.perf_counter()
    part = run.mechanisms.restore(round_outcome.side)
    safeguard = task_kind(config).safeguard(device, part, run.validation, config.seed, deployed=deployed)
    return part, {"round": number, "safeguard": safeguard,
                  "judged_against": f"p_b + rounds 1..{number - 1} as deployed", "bytes_up": session.channel.bytes_up,
                  "bytes_down": session.channel.bytes_down, "upload_bytes": upload_bytes,
                  "server_seconds": None if host is None else host.compute_seconds,
                  "device_seconds": upload_seconds + time.perf_counter() - judging,
                  "device_forwards": device.forward_samples - forwards, "device_peak_rss_mib": upload_peak.peak_mib,
                  "epochs_done": round_outcome.epochs_done,
                  "final_train_loss": round_outcome.final_train_loss, "cache_reads": _cache_reads(round_outcome),
                  "server_view": None if host is None else str(run.workdir / server_dir(number)),
                  "ground_truth": str(run.workdir / DEVICE_DIR / ground_truth_file(number))}


def upload_refreshed(session: StartedRun, number: int, deployed: SideOutput) -> None:
    """Round `number`'s upload: every uploaded sample's targets refreshed at `deployed` by the device's
    `make_upload` (Δ_k = onehot(y) − (p_b + deployed(A)); generation: r_t at z_t + W_U·deployed(A)), under its
    round 1 id (recorded in the round's ground truth), without its states: the server pairs the targets with
    the states it holds from round 1."""
    device, examples, device_dir = session.device, session.upload_set, session.workdir / DEVICE_DIR
    ids = ground_truth_ids(device_dir / ground_truth_file(1))
    write_ground_truth(device_dir / ground_truth_file(number), ids, examples)
    start = 0
    for chunk, outputs in device.batches(examples, f"round {number} upload"):
        device.send(session.channel, chunk, outputs, ids[start:start + len(chunk)], deployed)
        start += len(chunk)
    device.finish(session.channel, refreshing=True)


def _dropped(record: dict[str, Any]) -> bool:
    """Whether the round's safeguard dropped its side output (None: the safeguard is off, nothing is dropped)."""
    return record["safeguard"] is not None and record["safeguard"]["factor"] == 0


def _total(values: Iterable[float | None]) -> float | None:
    """The rounds' sum, or None where a round's figure is unknown (the server's seconds over the network)."""
    values = list(values)
    return None if None in values else sum(values)


def _cache_reads(outcome: TrainOutcome) -> int:
    """Cache reads of a round's training: every cached sample in each epoch after the first."""
    return outcome.cache_samples * max(0, outcome.epochs_done - 1)
