"""Statistics over the devices of a many-device audit row: the distribution of a per-device figure
(mean, 10th percentile, minimum, maximum) and the paired gain of one row over another.

The unit is the device, not the evaluation sample: "what the server buys per device" is each
device's utility under a row minus the same device's utility under `device_local`, and its 95%
CI is a percentile bootstrap over devices of the mean of those paired differences (a device is
resampled with both of its figures, so the between-device spread common to both rows cancels).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from secure_assist.metrics import bootstrap_interval

# How `paired_gain` pairs, as the report states it.
PAIRING = "per device: its own utility under the row minus under device_local; 95% CI: bootstrap over devices"


def spread(values: Sequence[float]) -> dict[str, Any]:
    """mean, p10 (the 10th percentile, linear interpolation), min and max over devices, and n."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "p10": float(np.percentile(array, 10)), "min": float(array.min()),
            "max": float(array.max()), "n": len(array)}


def paired_gain(values: Sequence[float], reference: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """The mean over devices of `values[i] - reference[i]` with its 95% bootstrap CI over devices,
    and whether it is significant ('above' / 'below' zero, or 'no')."""
    gains = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    low, high = bootstrap_interval(lambda idx: float(gains[idx].mean()), len(gains), seed)
    return {"mean": float(gains.mean()), "ci95": [low, high],
            "significant": "above" if low > 0 else "below" if high < 0 else "no",
            "per_device": gains.tolist(), "pairing": PAIRING}
