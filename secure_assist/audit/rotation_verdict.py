"""The verdict's clauses on a secret rotation of the activations: does it hold, attack by attack?

The rotation holds against an alignment attack when no attack re-run on the states it
realigned scores significantly better (95% CI lower bound) than what the server gets
without R: the same attack on the states as received, or what is not specific to any sample
(the majority-class prior for labels, the re-run's guesses scored on shuffled samples for
inputs, the backbone alone for a model copy), whichever is higher.
It holds against rotation-invariant matching when that matching does no better than plain
candidate matching on the received states.
"""

from __future__ import annotations

from typing import Any

from attacks.base import ALIGNMENT, EXTRACTION, LABELS, RECONSTRUCTION
from protocol.model.names import ROTATION_MECHANISM

# kind -> (metric, its CI key, what the server gets without the states, format)
_METRICS = {LABELS: ("accuracy", "ci95", "prior_baseline", "{:.1%}"),
            RECONSTRUCTION: ("token_f1", "token_f1_ci95", "token_f1_shuffled", "{:.2f}"),
            EXTRACTION: ("agreement", "agreement_ci95", "backbone_only_agreement", "{:.1%}")}
_STATELESS = {LABELS: "prior", RECONSTRUCTION: "on shuffled samples", EXTRACTION: "backbone alone"}
INVARIANT_MATCHING, PLAIN_MATCHING = "rotation_invariant_matching", "candidate_matching"


def _gain(row: dict[str, Any], received: dict[str, Any]) -> tuple[float, str]:
    """(lower CI bound − the score without R, text) of a re-run row against its row as received."""
    metric, interval, stateless, form = _METRICS[row["kind"]]
    floor = max(received[metric], row[stateless])
    basis = "as received" if floor == received[metric] else _STATELESS[row["kind"]]
    text = (f"{received['attack']} {form.format(row[metric])} [{form.format(row[interval][0])}, "
            f"{form.format(row[interval][1])}] vs {form.format(floor)} {basis}")
    return row[interval][0] - floor, text


def _aligner_clause(aligner: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    name = aligner["attack"]
    reruns = [r for r in rows.values() if r.get("realigned_by") == name and r["kind"] in _METRICS]
    gains = [_gain(r, rows[r["base_attack"]]) for r in reruns if r["base_attack"] in rows]
    recovered = f"R̂ recovers {aligner['layers_recovered']}/{aligner['layers']} layers"
    if not gains:
        return f"rotation vs {name}: {recovered}, nothing re-run"
    gain, text = max(gains, key=lambda g: g[0])
    if gain > 0:
        return f"rotation does NOT hold against {name} ({recovered}): {text}"
    return f"rotation holds against {name} ({recovered}; closest: {text})"


def rotation_clauses(variant: dict[str, Any]) -> list[str]:
    """One clause per alignment attack and one for rotation-invariant matching, for a
    variant whose device rotates its states; none otherwise."""
    if ROTATION_MECHANISM not in {m["name"] for m in variant["utility"]["mechanisms"]}:
        return []
    rows = {r["attack"]: r for r in variant["attacks"] if r["status"] == "ok"}
    clauses = [_aligner_clause(r, rows) for r in rows.values() if r["kind"] == ALIGNMENT]
    invariant, plain = rows.get(INVARIANT_MATCHING), rows.get(PLAIN_MATCHING)
    if invariant is not None:
        lower = invariant["exact_match_ci95"][0]
        baseline = plain["exact_match"] if plain is not None else 0.0
        state = "does NOT hold against" if lower > baseline else "holds against"
        clauses.append(f"rotation {state} {INVARIANT_MATCHING}: exact match {invariant['exact_match']:.1%} "
                       f"(candidate_matching as received {baseline:.1%})")
    return clauses
