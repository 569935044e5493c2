"""Utility and cost of the privacy mechanisms on SST-2 with SmolLM2-135M (prints JSON).

One device forward pass (the device-side feature cache), many mechanisms:
- DP (`gaussian`, `label_rr`) at several ε, through the real server path
  (DeviceRole.send -> mechanism -> InProcessChannel -> SideTuningServer), then the
  device's safeguard on its held-out validation split, then dev accuracy;
- `he_ckks`: dev accuracy of the CKKS-fitted ridge head vs the same head fitted in
  plaintext, and its costs at several sample counts (counts above the cached set tile
  the cached features: cost measurement only).

    python benchmarks/mechanisms.py            # full (about 15-25 min on 2 busy cores)
    python benchmarks/mechanisms.py --quick    # small smoke version
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

from protocol.model.backbone import load_backbone
from protocol.wire.channel import InProcessChannel
from protocol.device.forward_device import DeviceRole, PivotBatch, new_sample_ids, prediction_difference
from protocol.device.features import encode_dataset
from protocol.modes.ckks_ridge.messages import HeFitReply
from protocol.wire.messages import FetchWeights, SideWeights, TrainRequest, expect
from protocol.server.training_settings import ServerTraining
from protocol.server.side_tuning import SideTuningServer
from protocol.modes.ckks_ridge.head import RidgeHead
from protocol.model.side_network import network_from_arrays
from protocol.data.tasks import SST2, builtin_split, sample
from secure_assist.mechanisms import MechanismChain
from protocol.modes.ckks_ridge.context import CkksPublicContext
from secure_assist.mechanisms.he_ckks import HeCkksParameters
from protocol.modes.ckks_ridge.server import HeHeadServer
from protocol.modes.ckks_ridge.ridge import ridge_operator
from secure_assist.training.safeguard import choose_shrink


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


class Setting:
    """Cached device outputs for the train subset (split into upload / held-out validation) and dev."""

    def __init__(self, n_train: int, n_dev: int | None, validation_fraction: float = 0.1) -> None:
        self.device = DeviceRole(load_backbone(), SST2, progress=False)
        train = sample(builtin_split("sst2", "train"), n_train, 0)
        dev = builtin_split("sst2", "dev")
        dev = dev[:n_dev] if n_dev else dev
        pivots, dev_pivots = encode_dataset(self.device, train), encode_dataset(self.device, dev)
        order = np.random.default_rng(0).permutation(len(train))
        cut = int(len(train) * validation_fraction)
        self.val_idx, self.up_idx = order[:cut], order[cut:]
        self.train, self.pivots = train, pivots
        self.labels = np.array([e.label for e in train])
        self.dev_acts = dev_pivots.activations
        self.dev_probs = torch.softmax(dev_pivots.label_logits, -1).numpy()
        self.dev_labels = np.array([e.label for e in dev])
        self.val_probs = torch.softmax(pivots.label_logits[self.val_idx], -1).numpy()

    def upload_through(self, channel, chain: MechanismChain, indices: np.ndarray) -> None:
        """The device's epoch-1 upload of `indices`, through the mechanism chain."""
        self.device.transform = chain
        for start in range(0, len(indices), self.device.batch_size):
            idx = indices[start:start + self.device.batch_size]
            batch = PivotBatch(self.pivots.activations[idx], self.pivots.label_logits[idx])
            self.device.send(channel, [self.train[i] for i in idx], batch, new_sample_ids(len(idx)))
        self.device.finish(channel)

    def safeguarded_dev_accuracy(self, val_side: np.ndarray, dev_side: np.ndarray) -> dict:
        decision = choose_shrink(self.val_probs, val_side, self.labels[self.val_idx])
        return {"dev_accuracy_unshrunk": accuracy(self.dev_probs + dev_side, self.dev_labels),
                "dev_accuracy": accuracy(self.dev_probs + decision.factor * dev_side, self.dev_labels),
                "shrink_factor": decision.factor, "safeguard": decision.action,
                "validation_accuracy_chosen": decision.validation_accuracy_chosen,
                "validation_accuracy_backbone": decision.validation_accuracy_backbone,
                "safeguard_p_value": decision.p_value}


def side_network_run(setting: Setting, names: list[str], values: dict, epochs: int) -> dict:
    chain = MechanismChain(names, values, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        server = SideTuningServer(workdir, ServerTraining())
        channel = InProcessChannel(server)
        start = time.perf_counter()
        try:
            setting.upload_through(channel, chain, setting.up_idx)
            if epochs > 1:
                channel.request(TrainRequest(epochs=epochs - 1))
            weights = expect(channel.request(FetchWeights()), SideWeights)
        finally:
            server.close()
    network = network_from_arrays(weights.state, weights.architecture)
    chain.restore(network)
    network.eval()
    with torch.inference_mode():
        val_side = network(setting.pivots.activations[setting.val_idx]).numpy()
        dev_side = network(setting.dev_acts).numpy()
    return {"mechanisms": chain.describe(), "seconds": time.perf_counter() - start,
            **setting.safeguarded_dev_accuracy(val_side, dev_side)}


def he_run(setting: Setting, parameters: HeCkksParameters, indices: np.ndarray) -> tuple[dict, RidgeHead]:
    """Upload `indices` under he_ckks, fit on the server, decrypt on the device; costs measured."""
    chain = MechanismChain(["he_ckks"], vars(parameters), seed=0)
    he = chain.stage("encrypt")
    with tempfile.TemporaryDirectory() as workdir:
        server = HeHeadServer(workdir, progress=True)
        channel = InProcessChannel(server)
        try:
            setting.upload_through(channel, chain, indices)
            upload_bytes = channel.bytes_up
            request = he.fit_request()
            reply = expect(channel.request(request), HeFitReply)
            # The server object holds a public context only (encryption parameters, no key).
            assert isinstance(server.context, CkksPublicContext)
        finally:
            server.close()
    start = time.perf_counter()
    head = he.decrypt_head(reply)
    decrypt_seconds = time.perf_counter() - start
    return {"samples": int(len(indices)), "device_encrypt_ms_per_sample": 1000 * he.encrypt_seconds / len(indices),
            "ciphertext_bytes_per_sample": he.ciphertext_bytes / len(indices),
            "public_context_bytes": int(len(request.public_context)),
            "server_fit_seconds": server.fit_seconds, "device_decrypt_seconds": decrypt_seconds,
            "upload_bytes_per_sample": upload_bytes / len(indices),
            "fit_reply_bytes": len(reply.ciphertexts), "fit_reply_ciphertexts": len(reply.ciphertext_sizes),
            "n_features": parameters.he_features}, head


def he_part(setting: Setting, quick: bool) -> dict:
    parameters = HeCkksParameters(he_features=8 if quick else 128)
    cost, head = he_run(setting, parameters, setting.up_idx)
    # The same head fitted in plaintext: the server's feature map, plaintext Δ.
    pivots = setting.pivots
    uploaded = pivots.activations[setting.up_idx].numpy().astype(np.float16)
    delta = prediction_difference(pivots.label_logits[setting.up_idx],
                                  torch.from_numpy(setting.labels[setting.up_idx])).numpy()
    plain = RidgeHead(head.feature_map, ridge_operator(head.feature_map.apply(uploaded), parameters.he_ridge) @ delta)
    val_acts = pivots.activations[setting.val_idx].numpy()
    dev_acts = setting.dev_acts.numpy()
    result = {"accuracy_run": cost, "max_weight_error": float(np.abs(head.weights - plain.weights).max()),
              "he_ckks": setting.safeguarded_dev_accuracy(head.predict(val_acts), head.predict(dev_acts)),
              "plaintext_ridge": setting.safeguarded_dev_accuracy(plain.predict(val_acts), plain.predict(dev_acts))}
    sizes = (200,) if quick else (500, 2000, 8000)
    everything = np.arange(len(setting.train))
    result["cost_growth"] = [he_run(setting, parameters, np.resize(everything, n))[0] for n in sizes]
    result["cost_growth_note"] = "8000 tiles the 2000 cached samples 4x (cost measurement only)"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("all", "dp", "he"), default="all")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_train, n_dev = (2000, None) if not args.quick else (2000, 200)
    epochs = args.epochs or (3 if args.quick else 5)
    epsilons = (1.0, 8.0) if args.quick else (0.5, 1.0, 2.0, 4.0, 8.0)
    setting = Setting(n_train, n_dev)
    up_idx = setting.up_idx if not args.quick else setting.up_idx[:400]
    setting.up_idx = up_idx
    out = {"setting": {"task": "sst2", "backbone": "smollm2-135m", "train_subset": n_train,
                       "uploaded": int(len(up_idx)), "device_validation": int(len(setting.val_idx)),
                       "dev": int(len(setting.dev_labels)), "epochs": epochs, "delta": 1e-5},
           "zero_shot_dev_accuracy": accuracy(setting.dev_probs, setting.dev_labels)}
    if args.part in ("all", "dp"):
        out["plain"] = side_network_run(setting, ["rotation_mask"], {}, epochs)
        out["dp"] = {name: {str(eps): side_network_run(setting, [name], {"epsilon": eps}, epochs)
                            for eps in epsilons} for name in ("gaussian", "label_rr")}
    if args.part in ("all", "he"):
        out["he"] = he_part(setting, args.quick)
    print(json.dumps(out, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
