"""Backbone loading, pivot extraction and label words."""

import pytest
import torch

from protocol.model.backbone import EMBEDDED_BACKBONES, load_backbone, sharing_backbones
from protocol.device.forward_device import DeviceRole, pivot_outputs
from protocol.errors import UserInputError
from protocol.data.tasks import SST2

TINY = sorted(name for name in EMBEDDED_BACKBONES if name.startswith("tiny-"))


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbones_expose_layers_and_match_full_logits(name: str) -> None:
    backbone = load_backbone(name, device=torch.device("cpu"))
    assert (backbone.n_layers, backbone.hidden_size) == (2, 64)
    label_ids = backbone.label_token_ids(SST2.label_words)
    texts = ["a fine film", "dull , tedious and far too long for its own good"]
    with torch.inference_mode():
        states, label_logits = pivot_outputs(backbone, SST2, texts, (1, 2), label_ids)
        for row, text in enumerate(texts):
            encoded = backbone.tokenizer(SST2.prompt(text), return_tensors="pt")
            full = backbone.model(**encoded).logits[0, -1, label_ids]
            torch.testing.assert_close(label_logits[row], full, atol=1e-4, rtol=1e-4)
    assert states.shape == (2, 2, 64)


def test_padding_does_not_change_a_samples_activations(tiny_llama) -> None:
    device = DeviceRole(tiny_llama, SST2, progress=False)
    alone = device.forward(["short"]).activations
    padded = device.forward(["short", "a much longer review that forces padding on the first one"]).activations
    torch.testing.assert_close(alone[0], padded[0], atol=1e-3, rtol=1e-3)


def test_multi_token_label_word_is_a_clear_error(tiny_llama) -> None:
    with pytest.raises(UserInputError, match="single token"):
        tiny_llama.label_token_ids((" positive", " extraordinarily-negative"))


def test_unknown_backbone_names_the_choices() -> None:
    with pytest.raises(UserInputError, match="tiny-llama"):
        load_backbone("tiny-unknown")
    with pytest.raises(UserInputError, match="cannot load backbone"):
        load_backbone("/nonexistent/model/dir")


def test_layers_out_of_range_are_rejected(tiny_llama) -> None:
    with pytest.raises(UserInputError, match="within 1..2"):
        DeviceRole(tiny_llama, SST2, layers=(0, 3))


def test_simulated_devices_share_one_backbone_only_inside_the_scope() -> None:
    with sharing_backbones():
        first, second = load_backbone("tiny-llama"), load_backbone("tiny-llama")
        assert first is second
    assert load_backbone("tiny-llama") is not first
