"""Label attacks on synthetic views with known answers, and the auditor's separation of truth."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.base import MissingViewField, NotApplicable, PublicKnowledge

from attacks.registry import ATTACKS, all_attacks, get_attack
from attacks.labels import resolve_clusters
from attacks.public_model import public_backbone, softmax, zero_shot_logits
from protocol.errors import UserInputError
from protocol.wire.messages import FullUpload, Upload
from protocol.data.tasks import SST2, Example
from protocol.server.transcript import ServerView
from secure_assist.audit.auditor import audit, run_attack
from attack_views import random_ids, write_truth, write_view

N = 200


@pytest.fixture(scope="module")
def tiny() -> PublicKnowledge:
    return PublicKnowledge(backbone_name="tiny-llama", task=SST2)


def _pae_view(tmp_path, public, delta_of=lambda onehot, probs: onehot - probs, seed=0):
    """A PAE view from random 2-layer activations; Δ computed as the device would."""
    rng = np.random.default_rng(seed)
    backbone = public_backbone(public.backbone_name)
    acts = rng.normal(size=(N, backbone.n_layers, backbone.hidden_size)).astype(np.float32)
    labels = rng.integers(0, 2, N)
    probs = softmax(zero_shot_logits(backbone, public.task, acts[:, -1]))
    delta = delta_of(np.eye(2)[labels], probs).astype(np.float32)
    ids = random_ids(N, seed)
    write_view(tmp_path, [Upload(sample_ids=ids[:100], activations=acts[:100], delta=delta[:100], layers=(1, 2)),
                          Upload(sample_ids=ids[100:], activations=acts[100:], delta=delta[100:], layers=(1, 2))])
    write_truth(tmp_path, ids, labels.tolist(), [f"text {i}" for i in range(N)])
    return labels


def test_registry_is_the_one_list():
    names = all_attacks()
    assert {"delta_argmax", "public_head", "public_head_zero_shot", "clustering_delta", "side_model",
            "model_completion_k8", "gradient_norm", "gradient_cosine", "model_extraction"} <= set(names)
    assert all(cls.NAME == name and cls.DESCRIPTION for name, cls in ATTACKS.items())
    with pytest.raises(UserInputError, match="known:"):
        get_attack("no_such_attack")


def test_delta_argmax_and_public_head_recover_labels(tmp_path, tiny):
    _pae_view(tmp_path, tiny)
    for name in ("delta_argmax", "public_head"):
        report = run_attack(name, tmp_path, public=tiny)
        assert report["accuracy"] == 1.0 and report["n"] == N
        assert report["ci95"][0] <= 1.0 and 0.3 < report["prior_baseline"] < 0.7


def test_public_head_undoes_a_logit_space_signal(tmp_path, tiny):
    # Δ given relative to p_b only: p_b + Δ = onehot, so Δ's own argmax is not enough.
    _pae_view(tmp_path, tiny, delta_of=lambda onehot, probs: 0.5 * onehot - probs)
    assert run_attack("public_head", tmp_path, public=tiny)["accuracy"] == 1.0


def test_clustering_breaks_a_secret_rotation(tmp_path, tiny):
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    labels = _pae_view(tmp_path, tiny, delta_of=lambda onehot, probs: (onehot - 0.5) @ rotation.T)
    prior = np.bincount(labels, minlength=2) / len(labels)
    public = PublicKnowledge(backbone_name="tiny-llama", task=SST2,
                             labeled=tuple(Example("x", int(y))
                                           for y in labels[:40]))
    report = run_attack("clustering_delta", tmp_path, public=public)
    # Clusters are exact; naming them by a prior is right unless the classes are balanced.
    assert report["accuracy"] in (1.0, 0.0) and (report["accuracy"] == 1.0 or abs(prior[0] - 0.5) < 0.05)


def test_resolve_clusters_uses_the_prior():
    assignments = np.array([0, 0, 0, 1])
    assert resolve_clusters(assignments, 2, np.array([0.2, 0.8])).tolist() == [1, 1, 1, 0]


def test_zero_shot_ignores_delta(tmp_path, tiny):
    _pae_view(tmp_path, tiny)
    first = get_attack("public_head_zero_shot").run(ServerView(tmp_path / "server"), tiny).predictions
    other = tmp_path / "other"
    _pae_view(other, tiny, delta_of=lambda onehot, probs: np.zeros_like(probs))
    assert np.array_equal(first, get_attack("public_head_zero_shot").run(ServerView(other / "server"), tiny).predictions)


def test_missing_fields_are_named(tmp_path, tiny):
    _pae_view(tmp_path, tiny)
    with pytest.raises(MissingViewField, match="output_gradients"):
        run_attack("gradient_norm", tmp_path, public=tiny)
    with pytest.raises(MissingViewField, match="side_network"):
        run_attack("side_model", tmp_path, public=tiny)
    with pytest.raises(NotApplicable, match="public labeled"):
        run_attack("model_completion_k8", tmp_path, public=tiny)
    full = tmp_path / "full"
    write_view(full, [FullUpload(sample_ids=random_ids(2), activations=np.zeros((2, 2, 3, 4), np.float16),
                                 attention_mask=np.ones((2, 3), np.uint8), labels=np.array([0, 1]))])
    with pytest.raises(MissingViewField, match="delta"):
        get_attack("delta_argmax").run(ServerView(full / "server"), tiny)


def test_attack_output_does_not_depend_on_ground_truth(tmp_path, tiny):
    labels = _pae_view(tmp_path, tiny)
    result, report = audit("public_head_zero_shot", tmp_path, public=tiny)
    ids = [bytes.fromhex(s) for s in result.sample_ids]
    write_truth(tmp_path, np.frombuffer(b"".join(ids), np.uint8).reshape(-1, 16),
                (1 - labels).tolist(), ["" for _ in labels])
    flipped_result, flipped_report = audit("public_head_zero_shot", tmp_path, public=tiny)
    assert np.array_equal(result.predictions, flipped_result.predictions)
    assert flipped_report["accuracy"] == pytest.approx(1 - report["accuracy"])


def test_side_model_labels_with_the_server_network(tmp_path, tiny):
    """φ trained by the real server on the uploads labels the training set."""
    from protocol.wire.channel import InProcessChannel
    from protocol.wire.messages import TrainUntil
    from protocol.server.training_settings import ServerTraining
    from protocol.server.side_tuning import SideTuningServer

    rng = np.random.default_rng(1)
    backbone = public_backbone("tiny-llama")
    labels = rng.integers(0, 2, N)
    # Activations that carry the label, so φ can fit Δ.
    acts = rng.normal(size=(N, 2, backbone.hidden_size)).astype(np.float32)
    acts[:, :, 0] += 4 * (2 * labels[:, None] - 1)
    delta = (np.eye(2)[labels] - softmax(zero_shot_logits(backbone, SST2, acts[:, -1]))).astype(np.float32)
    ids = random_ids(N, 1)
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4, learning_rate=1e-2))
    channel = InProcessChannel(server)
    channel.request(Upload(sample_ids=ids, activations=acts, delta=delta, layers=(1, 2)))
    channel.request(TrainUntil(epochs_total=31))
    server.close()
    write_truth(tmp_path, ids, labels.tolist(), ["t"] * N)
    assert run_attack("side_model", tmp_path, public=tiny)["accuracy"] >= 0.95


def test_model_completion_probe_learns_from_public_labels(tmp_path):
    from attacks.base import PublicFeatures
    from protocol.data.tasks import Example

    rng = np.random.default_rng(2)
    backbone = public_backbone("tiny-llama")
    direction = rng.normal(size=backbone.hidden_size)

    def features(texts, layers):
        signs = np.array([1.0 if t.startswith("good") else -1.0 for t in texts])
        acts = rng.normal(size=(len(texts), len(layers), backbone.hidden_size)) + 3 * signs[:, None, None] * direction
        return PublicFeatures(activations=acts.astype(np.float32), label_logits=np.zeros((len(texts), 2), np.float32))

    labeled = tuple(Example(f"{'good' if i % 2 else 'bad'} {i}", i % 2) for i in range(32))
    public = PublicKnowledge(backbone_name="tiny-llama", task=SST2, labeled=labeled, features=features)
    labels = rng.integers(0, 2, N)
    acts = features([("good" if y else "bad") for y in labels], (1, 2)).activations
    ids = random_ids(N, 3)
    write_view(tmp_path, [Upload(sample_ids=ids, activations=acts, delta=np.zeros((N, 2), np.float32), layers=(1, 2))])
    write_truth(tmp_path, ids, labels.tolist(), ["t"] * N)
    assert run_attack("model_completion_k32", tmp_path, public=public)["accuracy"] >= 0.95


def test_cli_attack_prints_json_and_rejects_mistakes(tmp_path, tiny, capsys):
    import json

    from secure_assist.cli import main

    _pae_view(tmp_path, tiny)
    assert main(["attack", "delta_argmax", "--workdir", str(tmp_path), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert main(["attack", "delta_argmax", "--transcript", str(tmp_path), "--json", "--quiet"]) == 0  # alias
    assert main(["attack", "delta_argmax", "--workdir", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", "no_such_attack", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
