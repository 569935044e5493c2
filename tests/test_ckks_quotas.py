"""What a `ckks_ridge` device can make the server store and compute: uploads checked against the public
context the device declares, a fit's work bounded before it starts, repeated fits answered from the last
one. Real SEAL ciphertexts (encryptions of zero under an attacker's own key, which the server cannot tell
from a device's); each test failed on the server before the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError
from protocol.modes.ckks_ridge.context import load_public_context
from protocol.modes.ckks_ridge.messages import HeFitRequest
from protocol.modes.ckks_ridge.packing import CkksParameters
from protocol.modes.ckks_ridge.server import HeHeadServer
from protocol.modes.ckks_ridge.store import BLOCKS_DIR
from protocol.server.limits import ServerLimits
from protocol.server.transcript import TRANSCRIPT_FILE
from protocol.transport.abuse import ckks_encryptions, ckks_upload
from protocol.wire.channel import InProcessChannel

CONTEXT, ENCRYPT_ZERO = ckks_encryptions()
PER_SAMPLE = 2048


def stored_bytes(workdir: Path) -> int:
    return sum(p.stat().st_size for p in (workdir / BLOCKS_DIR).glob("*"))


def fit_request(n_features: int = 8, ridge: float = 10.0) -> HeFitRequest:
    return HeFitRequest(public_context=np.frombuffer(CONTEXT, np.uint8).copy(), n_features=n_features, ridge=ridge)


def test_garbage_and_oversized_ciphertexts_are_refused_at_upload(tmp_path: Path) -> None:
    """Before the fix 12 one-sample uploads of 60 MiB of random "ciphertexts" were stored (+720 MB on disk
    and in memory); now each ciphertext is parsed by SEAL and sized against the declared context."""
    server = HeHeadServer(tmp_path, limits=ServerLimits(ckks_ciphertext_bytes_per_sample=PER_SAMPLE))
    channel = InProcessChannel(server)
    largest = load_public_context(CONTEXT).max_ciphertext_bytes
    junk = np.random.default_rng(0).integers(0, 256, largest, dtype=np.uint8).tobytes()
    attacks = {"malformed ciphertext": [junk, junk],
               "takes at most": [junk + b"\0", junk + b"\0"]}
    for expected, ciphertexts in attacks.items():
        with pytest.raises(ProtocolError, match=expected):
            channel.request(ckks_upload(1, ciphertexts, CONTEXT))
    assert (tmp_path / TRANSCRIPT_FILE).stat().st_size == 0 and stored_bytes(tmp_path) == 0
    server.close()


def test_ciphertext_bytes_per_sample_are_bounded(tmp_path: Path) -> None:
    """One-sample blocks each cost a whole ciphertext per class: a full block is admitted with one
    partial block, and the bytes stored stay within classes x (samples x quota + one ciphertext)."""
    server = HeHeadServer(tmp_path, limits=ServerLimits(ckks_ciphertext_bytes_per_sample=PER_SAMPLE))
    channel = InProcessChannel(server)
    channel.request(ckks_upload(256, [ENCRYPT_ZERO(), ENCRYPT_ZERO()], CONTEXT, seed=1))
    refused = None
    for seed in range(2, 40):
        try:
            channel.request(ckks_upload(1, [ENCRYPT_ZERO(), ENCRYPT_ZERO()], CONTEXT, seed=seed))
        except ProtocolError as exc:
            refused = exc
            break
    assert refused is not None and "ckks_ciphertext_bytes_per_sample" in str(refused)
    samples = len(server.store.sample_ids)
    bound = 2 * (samples * PER_SAMPLE + load_public_context(CONTEXT).max_ciphertext_bytes)
    assert server.store.ciphertext_bytes <= bound
    assert stored_bytes(tmp_path) <= bound + samples * 2 * 8 * 4 + 64 * 1024  # + activations, ids, npz headers
    with pytest.raises(ProtocolError, match="differs from the one"):  # one context per device
        other = ckks_encryptions(CkksParameters(poly_modulus_degree=16384))[0]
        channel.request(ckks_upload(1, [ENCRYPT_ZERO(), ENCRYPT_ZERO()], other, seed=99))
    server.close()


def test_fit_work_is_bounded_before_it_starts_and_repeats_are_cached(tmp_path: Path) -> None:
    """Before the fix one 4,096-sample block plus 150 one-sample blocks made each 264-byte fit request
    cost 24 s of CPU, repeatably; now the products a fit needs are counted before any work, and a
    repeated request is answered from the last fit."""
    limits = ServerLimits(ckks_ciphertext_bytes_per_sample=200_000, max_ckks_fit_products=22)
    server = HeHeadServer(tmp_path, limits=limits)
    channel = InProcessChannel(server)
    channel.request(ckks_upload(1024, [ENCRYPT_ZERO(), ENCRYPT_ZERO()], CONTEXT, seed=1))
    for seed in range(2, 12):
        channel.request(ckks_upload(1, [ENCRYPT_ZERO(), ENCRYPT_ZERO()], CONTEXT, seed=seed))
    # 11 blocks; ⌊8192/1024⌋ = 8 head rows per ciphertext, 9 rows (8 features and the bias): 2 groups.
    transcript = (tmp_path / TRANSCRIPT_FILE).stat().st_size
    with pytest.raises(ProtocolError, match=r"\(44 products\).*max_ckks_fit_products=22"):
        channel.request(fit_request(n_features=8))
    assert server.fit_seconds == 0.0 and server.fits_computed == 0
    assert (tmp_path / TRANSCRIPT_FILE).stat().st_size == transcript  # refused before it was recorded
    first = channel.request(fit_request(n_features=6))  # 7 rows: one group, 11 x 1 x 2 = 22 products
    server.close()

    server = HeHeadServer(tmp_path, limits=ServerLimits(ckks_ciphertext_bytes_per_sample=200_000,
                                                        max_ckks_fit_products=22))
    channel = InProcessChannel(server)  # reopened from disk: the same blocks
    reply = channel.request(fit_request(n_features=6))
    again = channel.request(fit_request(n_features=6))
    assert server.fits_computed == 1
    assert np.array_equal(again.ciphertexts, reply.ciphertexts)
    np.testing.assert_allclose(reply.components, first.components, atol=1e-5)
    other = channel.request(fit_request(n_features=6, ridge=1.0))  # another λ: the PCA and Gram are reused
    assert server.fits_computed == 2 and len(other.ciphertext_sizes) == 2
    server.close()

    # The PCA's own work: 1,034 samples x 16 values x 6 features = 99,264 multiply-adds.
    server = HeHeadServer(tmp_path, limits=ServerLimits(max_ckks_fit_products=22, max_ckks_pca_gmacs=99e-6))
    with pytest.raises(ProtocolError, match="max_ckks_pca_gmacs"):
        InProcessChannel(server).request(fit_request(n_features=6))
    assert server.fits_computed == 0
    server.close()


def test_a_refused_device_does_not_load_the_fit_libraries(tmp_path: Path) -> None:
    """Before the fix opening the mode imported scikit-learn and SciPy (about a hundred MiB resident and a
    second of CPU in `serve`) for any device, one whose every upload is refused included; now the first fit
    imports them. A fresh interpreter, so no other test has imported them already."""
    script = f"""
import sys
from pathlib import Path
from protocol.errors import ProtocolError
from protocol.modes.ckks_ridge.server import HeHeadServer
from protocol.transport.abuse import ckks_encryptions, ckks_upload
from protocol.wire.channel import InProcessChannel
context, _ = ckks_encryptions()
channel = InProcessChannel(HeHeadServer(Path({str(tmp_path)!r})))
try:
    channel.request(ckks_upload(1, [bytes(300_000), bytes(300_000)], context))
except ProtocolError:
    print("sklearn" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.split() == ["False"], result.stderr[-2000:]
