"""Reconstruction attacks on synthetic views whose answer is known."""

from __future__ import annotations

import numpy as np

from attack_views import random_ids, write_truth, write_view
from attacks.base import PublicFeatures, PublicKnowledge
from attacks.public_model import input_embeddings, public_backbone, token_states
from attacks.reconstruction import _TRAINED, words
from protocol.wire.messages import FullUpload, Upload
from protocol.data.tasks import SST2, builtin_split
from secure_assist.audit.auditor import audit, run_attack
from secure_assist.metrics import bag_scores, rouge_l

TEXTS = ["a gorgeous film", "dull and lifeless", "the best movie of the year", "painfully slow",
         "witty , warm and wise", "an utter mess", "quietly moving", "too long by half"]


def _text_features(texts, layers, dims=64):
    """Deterministic per-word vectors summed: a feature map whose inverse is learnable."""
    vectors = {}
    rows = []
    for text in texts:
        total = np.zeros(dims)
        for word in words(text):
            if word not in vectors:
                vectors[word] = np.random.default_rng(abs(hash(word)) % 2**32).normal(size=dims)
            total += vectors[word]
        rows.append(np.tile(total, (len(layers), 1)))
    return PublicFeatures(activations=np.array(rows, np.float32), label_logits=np.zeros((len(texts), 2), np.float32))


def _pivot_view(tmp_path, texts, features):
    ids = random_ids(len(texts))
    write_view(tmp_path, [Upload(sample_ids=ids, activations=features(texts, (1, 2)).activations,
                                 delta=np.zeros((len(texts), 2), np.float32), layers=(1, 2))])
    write_truth(tmp_path, ids, [0] * len(texts), texts)


def test_candidate_matching_finds_every_private_text(tmp_path):
    _pivot_view(tmp_path, TEXTS, _text_features)
    public = PublicKnowledge("tiny-llama", SST2, candidate_texts=tuple(["noise here", *reversed(TEXTS), "other"]),
                             features=_text_features)
    report = run_attack("candidate_matching", tmp_path, public=public)
    assert report["exact_match"] == 1.0 and report["rouge_l"] == 1.0


def test_learned_inversion_recovers_words_from_public_training(tmp_path):
    rng = np.random.default_rng(0)
    vocabulary = sorted({w for t in TEXTS for w in words(t)})
    corpus = tuple(" ".join(rng.choice(vocabulary, 4, replace=False)) for _ in range(400))
    _pivot_view(tmp_path, TEXTS, _text_features)
    public = PublicKnowledge("tiny-llama", SST2, unlabeled_texts=corpus, features=_text_features)
    first = run_attack("learned_inversion", tmp_path, public=public)
    assert first["token_f1"] >= 0.8
    # A second view attacked with the same public corpus reuses the memoized fit: same answer.
    _TRAINED.clear()
    fresh = run_attack("learned_inversion", tmp_path, public=public)
    assert len(_TRAINED) == 1 and run_attack("learned_inversion", tmp_path, public=public) == fresh == first


def test_nearest_embedding_inverts_raw_embeddings(tmp_path):
    backbone = public_backbone("tiny-llama")
    table = input_embeddings(backbone)
    ids = backbone.tokenizer(" film", add_special_tokens=False)["input_ids"]
    acts = np.stack([table[ids[0]], table[ids[0]]])[None].astype(np.float32)
    sample = random_ids(1)
    write_view(tmp_path, [Upload(sample_ids=sample, activations=acts, delta=np.zeros((1, 2), np.float32), layers=(1, 2))])
    write_truth(tmp_path, sample, [0], ["film"])
    assert run_attack("pivot_nearest_embedding", tmp_path, public=PublicKnowledge("tiny-llama", SST2))["token_f1"] == 1.0


def test_full_activation_inversion_ignores_labels_in_the_view(tmp_path):
    """Real layer-1 states of a tiny model are inverted per position; the same view with
    its labels stripped yields the identical reconstruction."""
    backbone = public_backbone("tiny-llama")
    text = "quietly moving"
    states, prompt = token_states(backbone, SST2, [text], 1)
    public = PublicKnowledge("tiny-llama", SST2,
                             unlabeled_texts=tuple(e.text for e in builtin_split("sst2", "train")[:100]))
    sample = random_ids(1)
    outputs = []
    for labels, folder in ((np.array([1]), "with"), (np.array([0]), "stripped")):
        write_view(tmp_path / folder, [FullUpload(sample_ids=sample, activations=states[None, None].astype(np.float16),
                                                  attention_mask=np.ones((1, len(prompt)), np.uint8), labels=labels)])
        write_truth(tmp_path / folder, sample, [1], [text])
        outputs.append(audit("full_activation_inversion", tmp_path / folder, public=public))
    (first, report), (second, _) = outputs
    assert first.texts == second.texts and first.token_ids == second.token_ids
    assert report["position_token_accuracy"] >= 0.9 and report["token_recall"] == 1.0


def test_reconstruction_metrics():
    assert bag_scores(["a", "b"], ["a", "c"]) == (0.5, 0.5, 0.5)
    assert bag_scores([], ["a"]) == (0.0, 0.0, 0.0)
    assert rouge_l("the cat sat", "the cat sat") == 1.0
