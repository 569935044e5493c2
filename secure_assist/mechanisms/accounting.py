"""Pure privacy accounting for one release per sample (no state, no I/O).

Thanks to the server's activation cache every sample's Δ leaves the device exactly
once, so the per-sample guarantee of the Gaussian mechanism is that of a single
release. Two accountants are computed and reported side by side:
- the analytic Gaussian mechanism (Balle & Wang, ICML 2018), exact for one release:
  δ(ε) = Φ(s/(2σ) - εσ/s) - e^ε Φ(-s/(2σ) - εσ/s) for L2 sensitivity s and noise σ;
  this is the ε the toolkit *uses* (it is the tight one);
- Opacus' Rényi-DP accountant (sampling rate 1, one step) over an extended order
  grid, which is an upper bound and therefore a little looser.
Randomized response over C classes is ε-label-DP with ε = ln(q(C-1)/(1-q)) when the
true label is kept with probability q.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from protocol.errors import UserInputError

# Opacus' default orders stop at 256; for one unsampled release the optimum sits
# higher when σ is large, so the grid is extended (Opacus warns otherwise).
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
                                      + [2.0**k for k in range(6, 15)])


def check_delta(delta: float) -> None:
    """δ must be a probability strictly between 0 and 1."""
    if not 0 < delta < 1:
        raise UserInputError(f"delta must be in (0, 1), got {delta}")


def analytic_gaussian_delta(epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """δ achieved at ε by one Gaussian release of noise σ and L2 sensitivity s (Balle & Wang, Thm 8)."""
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    # exp(ε)·Φ(-a-b) computed in log space so large ε does not overflow.
    return float(norm.cdf(a - b) - math.exp(epsilon + norm.logcdf(-a - b)))


def analytic_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest ε with δ(ε) <= delta for one Gaussian release."""
    check_delta(delta)
    if sigma <= 0:
        raise UserInputError(f"noise multiplier must be positive, got {sigma}")
    if analytic_gaussian_delta(0.0, sigma, sensitivity) <= delta:
        return 0.0
    high = 1.0
    while analytic_gaussian_delta(high, sigma, sensitivity) > delta:
        high *= 2
    return float(brentq(lambda e: analytic_gaussian_delta(e, sigma, sensitivity) - delta, 0.0, high, xtol=1e-10))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest noise σ giving (ε, δ)-DP for one release of L2 sensitivity s."""
    check_epsilon(epsilon)
    check_delta(delta)
    low, high = 1e-3 * sensitivity, sensitivity
    while analytic_gaussian_delta(epsilon, high, sensitivity) > delta:
        high *= 2
    return float(brentq(lambda s: analytic_gaussian_delta(epsilon, s, sensitivity) - delta, low, high, xtol=1e-10))


def rdp_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> tuple[float, float]:
    """(ε, best order) from Opacus' RDP accountant for one unsampled Gaussian release."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    check_delta(delta)
    rdp = compute_rdp(q=1.0, noise_multiplier=sigma / sensitivity, steps=1, orders=list(RDP_ORDERS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the order-range warning is handled by the extended grid
        epsilon, order = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(epsilon), float(order)


def check_epsilon(epsilon: float) -> None:
    """ε must be a positive finite number."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise UserInputError(f"epsilon must be a positive finite number, got {epsilon}")


def randomized_response_keep_probability(epsilon: float, n_classes: int) -> float:
    """q = e^ε / (e^ε + C - 1): the probability that RR reports the true label."""
    check_epsilon(epsilon)
    return math.exp(epsilon) / (math.exp(epsilon) + n_classes - 1)


def randomized_response_epsilon(keep_probability: float, n_classes: int) -> float:
    """ε of C-ary randomized response that keeps the label with probability q."""
    flip_each = (1 - keep_probability) / (n_classes - 1)
    return float(np.log(keep_probability / flip_each))
