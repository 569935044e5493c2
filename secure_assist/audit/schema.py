"""The audit report's schema: its name and version, which run figures a row keeps, and the
plain-JSON form of every value (`compare` reuses the cost keys and the JSON form)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

SCHEMA = "secure-assist/audit-report"
SCHEMA_VERSION = 2  # 2: reference rows, "what the server buys", balanced label metrics, data provenance
# The many-device audit's report (`secure_assist.audit.many_devices`): rows scored per device.
DEVICE_SCHEMA, DEVICE_SCHEMA_VERSION = "secure-assist/device-audit-report", 1
PACKAGES = ("secure-assist", "torch", "transformers", "peft", "opacus", "tenseal", "scikit-learn", "numpy",
            "matplotlib")
COST_KEYS = ("bytes_up", "bytes_down", "upload_bytes_per_sample", "device_seconds", "server_seconds",
             "server_seconds_per_cached_epoch", "device_forwards_after_epoch1", "device_peak_rss_mib")
# How the audit's one backbone pass is shared: passes a row computed, and passes it read from the device's cache.
FORWARD_KEYS = ("device_forwards", "device_forwards_reused")
# Reported by `he_ckks` runs only (the run summary's details).
HE_COST_KEYS = ("he_device_encrypt_ms_per_sample", "he_ciphertext_bytes_per_sample", "he_public_context_bytes",
                "he_server_fit_seconds", "he_device_decrypt_seconds")
# What a leak summary keeps of an attack row, by attack kind (besides its name and kind).
LEAK_KEYS = {"labels": ("balanced_accuracy", "balanced_accuracy_ci95", "balanced_chance", "accuracy", "ci95",
                        "prior_baseline", "auc", "auc_ci95"),
             "answer_tokens": ("token_accuracy", "token_accuracy_ci95", "frequency_baseline", "token_f1",
                               "exact_match")}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the numbers depend on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and tuples converted, non-finite floats kept as floats)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
