"""The additive adapter side network g_φ that the server trains (PAE MobiLLM).

Per selected backbone layer i, with pivot activation A_i:
    S_i_in = (1 - μ_i)·Â_i + μ_i·h_{S_{i-1}},   μ_i = sigmoid(α_i)   (S_1_in = Â_1)
    h_{S_i} = S_i_in + σ(S_i_in W_down_i) W_up_i
    g_φ(A) = W_head h_{S_last} + b
Â_i is A_i standardized per layer and dimension *(choice)*: residual-stream scales grow
~30x from the first to the last layer of SmolLM2 and a few dimensions carry massive
values, so raw inputs make MSE training slow and unstable. The statistics are fitted
by the server on its own cache (no device secret) and travel with φ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from protocol.errors import ProtocolError, UserInputError

# Spreads at or below this are treated as none (see `fit_input_scaling`).
_MIN_SPREAD = 1e-3


@dataclass(frozen=True)
class SideNetworkShape:
    """Hyper-parameters that rebuild a side network from its weights."""

    n_layers: int
    hidden_size: int
    rank: int
    n_classes: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise UserInputError(f"side network {name} must be a positive integer, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> "SideNetworkShape":
        """Rebuild from `asdict` output; unknown or missing keys are errors."""
        expected = set(cls.__dataclass_fields__)
        if set(values) != expected:
            raise UserInputError(f"side network shape needs exactly {sorted(expected)}, got {sorted(values)}")
        return cls(**values)  # type: ignore[arg-type]


class AdditiveSideNetwork(nn.Module):
    """g_φ: per-layer pivot activations (B, L, d) -> C values added to p_b (a `SideOutput`)."""

    KIND = "side_network"

    def __init__(self, shape: SideNetworkShape, dropout: float = 0.0, generator: torch.Generator | None = None) -> None:
        """`generator`: where the adapters' random initialisation is drawn (torch's global RNG if None)."""
        super().__init__()
        self.shape = shape
        n, d, r = shape.n_layers, shape.hidden_size, shape.rank
        self.register_buffer("input_mean", torch.zeros(n, d))
        self.register_buffer("input_scale", torch.ones(n, d))
        self.dropout = nn.Dropout(dropout)
        self.gate_logits = nn.Parameter(torch.zeros(n))
        self.down = nn.Parameter(torch.randn(n, d, r, generator=generator) / d**0.5)
        # Zero-initialised up-projections make every adapter start as the identity.
        self.up = nn.Parameter(torch.zeros(n, r, d))
        # Zeroed below, so skip the default initialisation: it would draw from the global RNG.
        self.head = torch.nn.utils.skip_init(nn.Linear, d, shape.n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def fit_input_scaling(self, activations: torch.Tensor) -> None:
        """Set the per-layer standardization from a (N, L, d) sample of inputs.

        A feature without spread in the sample (every feature of a one-sample upload, whose
        unbiased std is NaN, or one a peer holds constant) is centred and left unscaled:
        dividing later inputs by a vanishing spread would blow them up, and a NaN would
        poison the network for good."""
        acts = activations.float()
        self.input_mean.copy_(acts.mean(dim=0))
        spread = acts.std(dim=0) if len(acts) > 1 else torch.zeros_like(acts[0])
        self.input_scale.copy_(torch.where(spread > _MIN_SPREAD, spread, torch.ones_like(spread)))

    def side_states(self, activations: torch.Tensor) -> torch.Tensor:
        """h_{S_last}: the state the head reads, shape (B, d)."""
        if activations.ndim != 3 or activations.shape[1:] != (self.shape.n_layers, self.shape.hidden_size):
            raise UserInputError(
                f"side network expects activations (B, {self.shape.n_layers}, {self.shape.hidden_size}), "
                f"got {tuple(activations.shape)}"
            )
        inputs = self.dropout((activations.float() - self.input_mean) / self.input_scale).unbind(1)
        # Split once: indexing a parameter per layer (self.down[i]) makes each backward step fill a zero
        # gradient of the whole parameter, which made training time grow with the square of the layer count.
        gates, downs, ups = torch.sigmoid(self.gate_logits).unbind(0), self.down.unbind(0), self.up.unbind(0)
        state = None
        for x, gate, down, up in zip(inputs, gates, downs, ups):
            entry = x if state is None else (1 - gate) * x + gate * state
            state = entry + torch.nn.functional.gelu(entry @ down) @ up
        return state

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        """g_φ(A): C values per sample."""
        return self.head(self.side_states(activations))

    @property
    def n_outputs(self) -> int:
        """C, the number of side values."""
        return self.shape.n_classes

    @torch.no_grad()
    def map_outputs_(self, matrix: np.ndarray) -> None:
        """Make the output g(A)·M: out·M = h·(Mᵀ·W)ᵀ + Mᵀ·b, folded into the linear head."""
        transposed = torch.from_numpy(np.asarray(matrix, dtype=np.float32).T.copy())
        self.head.weight.copy_(transposed @ self.head.weight)
        self.head.bias.copy_(transposed @ self.head.bias)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """(tensors, architecture) for the model file."""
        return state_arrays(self), asdict(self.shape)

    @classmethod
    def from_arrays(cls, state: dict[str, np.ndarray], architecture: dict[str, object]) -> "AdditiveSideNetwork":
        """Rebuild from `to_arrays` output (validated)."""
        return network_from_arrays(state, architecture, cls)


class HiddenCorrection(AdditiveSideNetwork):
    """The generation side output: the uploaded layers' states at each position (N, L, d) ->
    a hidden-space correction s_t (N, d); the device adds W_U s_t to the next-token logits.
    Same adapters and gates as φ; the head maps to the hidden size instead of C classes."""

    KIND = "hidden_correction"


def state_arrays(network: AdditiveSideNetwork) -> dict[str, np.ndarray]:
    """φ as float32 numpy arrays (for safetensors on the wire and on disk)."""
    return {name: tensor.detach().cpu().float().numpy().copy() for name, tensor in network.state_dict().items()}


def network_from_arrays(state: dict[str, np.ndarray], architecture: dict[str, object],
                        cls: type[AdditiveSideNetwork] = AdditiveSideNetwork) -> AdditiveSideNetwork:
    """Rebuild φ (as `cls`) from arrays; names or shapes that do not match the architecture are errors."""
    network = cls(SideNetworkShape.from_dict(architecture))
    expected = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    found = {name: tuple(a.shape) for name, a in state.items()}
    if expected != found:
        raise ProtocolError(f"side network weights do not match architecture {architecture}")
    network.load_state_dict({name: torch.from_numpy(np.array(a)) for name, a in state.items()})
    return network
