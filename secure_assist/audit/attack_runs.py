"""Every configured attack on one run, as `audit` and `compare` run them.

Alignment attacks (kind ALIGNMENT) come last: each one's estimate R̂ of the device's
secret rotation realigns the server's view, and every configured attack that reads states
in the public backbone's coordinates (`Attack.PUBLIC_COORDINATES`) and ran on the view as
received runs again on the realigned one, as `<attack>@<aligner>`. That is how an audit
recomputes the activations-only baseline on realigned states and tells whether the
rotation holds against each alignment attack.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from attacks.base import ALIGNMENT, MEMBERSHIP, RECONSTRUCTION, NotApplicable, PublicKnowledge

from attacks.registry import get_attack
from attacks.realigned_view import RealignedView
from protocol.data.tasks import Example
from protocol.server.transcript import ServerView
from secure_assist.audit.auditor import audit
from secure_assist.training.workdir import server_dir as round_dir

# Uploads the attacks re-run on a realigned view read (the first ones): re-runs cost per
# sample and there is one set per alignment attack; their CIs reflect the smaller sample.
REALIGNED_SAMPLES = 500
SEPARATOR = "@"

# (row name, scored report or the reason it did not apply, seconds)
Outcome = tuple[str, "dict[str, Any] | NotApplicable", float]


def realigned_name(attack: str, aligner: str) -> str:
    """The row name of `attack` re-run on the view `aligner` realigned."""
    return f"{attack}{SEPARATOR}{aligner}"


def attack_reports(names: list[str] | tuple[str, ...], workdir: Path, public: PublicKnowledge, seed: int = 0,
                   progress: bool = True, held_out: list[Example] | None = None,
                   keep: frozenset[str] | None = None, server_dir: Path | None = None,
                   round_number: int = 1) -> Iterator[Outcome]:
    """Each named attack's scored report (or NotApplicable), alignment attacks last, each
    followed by the attacks it realigned. `keep`: the uploads (hex sample ids) reconstruction
    attacks read (default: all); their reports then say `subsampled`. Membership attacks read a
    deployed model, not the view: the audit runs them on every row (`secure_assist.audit.membership`).
    `server_dir`: where the view is stored (default: the folder of boosting round `round_number`,
    `<workdir>/server` for round 1); `round_number` also picks the ground truth the reports are scored on."""
    server_dir = server_dir or Path(workdir) / round_dir(round_number)
    names = [n for n in names if get_attack(n).KIND != MEMBERSHIP]
    aligners = [n for n in names if get_attack(n).KIND == ALIGNMENT]
    applied = []
    for name in [n for n in names if n not in aligners]:
        start = time.perf_counter()
        subset = keep if get_attack(name).KIND == RECONSTRUCTION else None
        try:
            report = audit(name, workdir, public=public, seed=seed, progress=progress, held_out=held_out,
                           keep=subset, server_dir=server_dir, round_number=round_number)[1]
            report["subsampled"] = subset is not None
            applied.append(name)
        except NotApplicable as exc:
            report = exc
        yield name, report, time.perf_counter() - start
    targets = [n for n in applied if get_attack(n).PUBLIC_COORDINATES]
    for aligner in aligners:
        start = time.perf_counter()
        try:
            result, report = audit(aligner, workdir, public=public, seed=seed, progress=progress, held_out=held_out,
                                   server_dir=server_dir, round_number=round_number)
        except NotApplicable as exc:
            yield aligner, exc, time.perf_counter() - start
            continue
        yield aligner, report, time.perf_counter() - start
        view = RealignedView(ServerView(server_dir), result.rotation, aligner, REALIGNED_SAMPLES)
        for target in targets:
            start = time.perf_counter()
            name = realigned_name(target, aligner)
            try:
                realigned = audit(target, workdir, public=public, seed=seed, progress=progress, held_out=held_out,
                                  view=view, round_number=round_number)[1]
            except NotApplicable as exc:
                yield name, exc, time.perf_counter() - start
                continue
            yield name, {**realigned, "attack": name, "base_attack": target, "realigned_by": aligner}, \
                time.perf_counter() - start
