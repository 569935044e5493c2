"""DP check benchmark: how much of each DP claim the audit's check certifies, whether it catches a
Gaussian mechanism that adds the noise of twice its claimed ε, and what it costs, printed as JSON.

Inputs are the default audit's: SmolLM2-135M on the SST-2 training subset it uploads (2,000 samples,
seed 0), whose first texts the check searches for its neighbouring pair. Sections:
  tightness   the Clopper-Pearson ε lower bound and the Gaussian-DP μ (with its ε) as a fraction of
              the claim, for gaussian at ε = 1, 4, 8 and label_rr at ε = 1, 4, at each release count
  detection   flagged-inconsistent rate over seeds of an under-noised gaussian (σ of twice the
              claimed ε) and of the correct one, at the claim ε = 1
  wall time   the DP check alone (pair search, releases, bounds) at the audit's default release count

    python benchmarks/dp_check.py [--releases 20000,200000,2000000] [--seeds 20] [--detection-releases 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `attacks` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch

from protocol.data.tasks import SST2, builtin_split, sample
from protocol.device.forward_device import DeviceRole
from protocol.model.backbone import load_backbone
from secure_assist.audit.config import AuditConfig
from secure_assist.audit.dp_check import empirical_epsilon, release_pair, releases_for
from secure_assist.mechanisms import MECHANISMS, mechanism_parameters
from secure_assist.mechanisms.accounting import analytic_gaussian_sigma
from secure_assist.mechanisms.delta import GaussianDelta

CLAIMS = (("gaussian", 1.0), ("gaussian", 4.0), ("gaussian", 8.0), ("label_rr", 1.0), ("label_rr", 4.0))
KEEP = ("empirical_epsilon_lower_bound", "tpr", "fpr", "gdp_mu", "gdp_mu_lower_bound", "gdp_epsilon",
        "claimed_epsilon", "consistent")


class UnderNoisedGaussian(GaussianDelta):
    """Claims the ε of its parameters but adds the noise calibrated for twice that ε."""

    def __init__(self, parameters: Any, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.noise_multiplier = analytic_gaussian_sigma(2 * self.epsilon, parameters.dp_delta, self.sensitivity)


def tightness(device: DeviceRole, texts: list, releases: list[int]) -> list[dict[str, Any]]:
    """Each claim's bounds at each release count (seed 0)."""
    rows = []
    for name, epsilon in CLAIMS:
        mechanism = MECHANISMS[name]
        parameters = mechanism_parameters(mechanism, {"epsilon": epsilon})
        for count in releases:
            result = empirical_epsilon(mechanism, parameters, release_pair(device, mechanism, texts, count), count)
            rows.append({"mechanism": name, "claimed_epsilon": epsilon, "releases_per_input": count,
                         **{k: result[k] for k in KEEP},
                         "fraction_of_claim": result["empirical_epsilon_lower_bound"] / epsilon})
    return rows


def detection(device: DeviceRole, texts: list, releases: int, seeds: int) -> dict[str, Any]:
    """Flag rates of the under-noised and the correct Gaussian mechanism at ε = 1 over `seeds` seeds."""
    parameters = mechanism_parameters(GaussianDelta, {"epsilon": 1.0})
    pair = release_pair(device, GaussianDelta, texts, releases)
    out: dict[str, Any] = {"claimed_epsilon": 1.0, "releases_per_input": releases, "seeds": seeds}
    for label, mechanism in (("under_noised", UnderNoisedGaussian), ("correct", GaussianDelta)):
        bounds = [empirical_epsilon(mechanism, parameters, pair, releases, seed)["empirical_epsilon_lower_bound"]
                  for seed in range(seeds)]
        out[label] = {"flagged": int(sum(b > 1.0 for b in bounds)), "bound_min": float(np.min(bounds)),
                      "bound_mean": float(np.mean(bounds)), "bound_max": float(np.max(bounds))}
    return out


def wall_time(device: DeviceRole, texts: list) -> dict[str, Any]:
    """Seconds of the DP check of `gaussian` at ε = 1 with the audit's default release count."""
    releases = releases_for(GaussianDelta, AuditConfig().dp_releases)
    start = time.perf_counter()
    pair = release_pair(device, GaussianDelta, texts, releases)
    empirical_epsilon(GaussianDelta, mechanism_parameters(GaussianDelta, {"epsilon": 1.0}), pair, releases)
    return {"releases_per_input": releases, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", default="20000,200000,2000000",
                        help="comma-separated release counts per input for the tightness section")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--detection-releases", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = DeviceRole(load_backbone(), SST2, progress=False)
    texts = sample(builtin_split("sst2", "train"), 2000, 0)
    print(json.dumps({"wall_time": wall_time(device, texts),
                      "tightness": tightness(device, texts, [int(r) for r in args.releases.split(",")]),
                      "detection": detection(device, texts, args.detection_releases, args.seeds)}, indent=1))


if __name__ == "__main__":
    main()
