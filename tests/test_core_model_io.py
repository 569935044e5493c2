"""Fine-tuned model files: round trip and integrity check."""

import pytest
import torch

from protocol.errors import UserInputError
from protocol.model.model_io import FineTunedModel, load_finetuned, save_finetuned
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape
from protocol.data.tasks import SST2


def _model() -> FineTunedModel:
    torch.manual_seed(0)
    network = AdditiveSideNetwork(SideNetworkShape(n_layers=2, hidden_size=8, rank=2, n_classes=2))
    with torch.no_grad():
        network.head.weight.normal_()
    return FineTunedModel(backbone="tiny-llama", task=SST2, layers=(1, 2), payload_dtype="float16",
                          side_network=network)


def test_round_trip(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    save_finetuned(path, _model())
    loaded = load_finetuned(path)
    assert (loaded.backbone, loaded.task, loaded.layers) == ("tiny-llama", SST2, (1, 2))
    x = torch.randn(3, 2, 8)
    torch.testing.assert_close(loaded.side_network(x), _model().side_network(x))


def test_tampered_file_is_refused(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    save_finetuned(path, _model())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="integrity"):
        load_finetuned(path)
    with pytest.raises(UserInputError, match="does not exist"):
        load_finetuned(tmp_path / "missing.safetensors")
