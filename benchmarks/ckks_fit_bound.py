"""What one `ckks_ridge` fit request can cost the server under its limits (prints JSON).

Real SEAL ciphertexts (encryptions of zero under a key of the benchmark's own, as an attacker
would send) at the default parameters (N = 8192). Measured: seconds per ciphertext-plaintext
product of the fit (with its plaintext encodings), hence the CPU a fit at the default
`--max-ckks-fit-products` costs; a repeated request (answered from the last fit); and the
attack that cost 24 s of CPU per request before the bounds (one 4,096-sample block, then
150 one-sample blocks, then a fit request): its blocks are now refused at the ciphertext
bytes per sample, and its fit (a 16-value PCA, so almost all of it is products) gives the
seconds per product.

    python benchmarks/ckks_fit_bound.py
"""

from __future__ import annotations

import json
import tempfile
import time

import numpy as np

from protocol.errors import ProtocolError
from protocol.modes.ckks_ridge.messages import HeFitRequest
from protocol.modes.ckks_ridge.server import HeHeadServer
from protocol.server.limits import ServerLimits
from protocol.transport.abuse import ckks_encryptions, ckks_upload
from protocol.wire.channel import InProcessChannel

BLOCKS, BLOCK_SAMPLES, FEATURES = 16, 256, 256


def fit(channel: InProcessChannel, context: bytes, n_features: int) -> float:
    start = time.perf_counter()
    channel.request(HeFitRequest(public_context=np.frombuffer(context, np.uint8).copy(), n_features=n_features,
                                 ridge=10.0))
    return time.perf_counter() - start


def main() -> None:
    context, encrypt_zero = ckks_encryptions()
    limits = ServerLimits()
    with tempfile.TemporaryDirectory() as folder:
        server = HeHeadServer(folder, limits=ServerLimits(max_ckks_fit_products=10**6))
        channel = InProcessChannel(server)
        for block in range(BLOCKS):
            upload = ckks_upload(BLOCK_SAMPLES, [encrypt_zero(), encrypt_zero()], context, seed=block)
            channel.request(upload.__class__(**{**upload.__dict__, "activations": np.random.default_rng(block)
                                                .standard_normal((BLOCK_SAMPLES, 2, 256)).astype(np.float32)}))
        first = fit(channel, context, FEATURES)
        repeated = fit(channel, context, FEATURES)
        groups = -(-(FEATURES + 1) // (8192 // BLOCK_SAMPLES))
        products = BLOCKS * groups * 2
        server.close()
    with tempfile.TemporaryDirectory() as folder:
        server = HeHeadServer(folder, limits=limits)
        channel = InProcessChannel(server)
        channel.request(ckks_upload(4096, [encrypt_zero(), encrypt_zero()], context, seed=0))
        admitted, start = 1, time.perf_counter()
        for block in range(150):
            try:
                channel.request(ckks_upload(1, [encrypt_zero(), encrypt_zero()], context, seed=1 + block))
                admitted += 1
            except ProtocolError as exc:
                refusal = str(exc).split(": ", 1)[1][:160]
                break
        uploads_seconds = time.perf_counter() - start
        attack_fit = fit(channel, context, 128)
        attack_products = admitted * -(-17 // (8192 // 4096)) * 2  # 16 features and the bias, 2 per ciphertext
        stored = server.store.ciphertext_bytes
        server.close()
    per_product = attack_fit / attack_products
    print(json.dumps({
        "fit_with_a_256_feature_pca": {"blocks": BLOCKS, "groups": groups, "classes": 2, "products": products,
                                       "seconds_pca_included": round(first, 3),
                                       "repeated_request_seconds": round(repeated, 4)},
        "default_max_ckks_fit_products": limits.max_ckks_fit_products,
        "cpu_seconds_at_the_bound_estimate": round(per_product * limits.max_ckks_fit_products, 2),
        "attack_4096_plus_150_one_sample_blocks": {
            "blocks_admitted": admitted, "refusal": refusal, "upload_seconds": round(uploads_seconds, 3),
            "ciphertext_bytes_stored": stored, "fit_products": attack_products, "fit_seconds": round(attack_fit, 3),
            "seconds_per_product": round(per_product, 5)},
    }, indent=1))


if __name__ == "__main__":
    main()
