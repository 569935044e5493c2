"""Shared fixtures: tiny backbones are loaded once per session (they are read-only)."""

from __future__ import annotations

import pytest
import torch

from protocol.backbone import Backbone, load_backbone


@pytest.fixture(scope="session")
def tiny_llama() -> Backbone:
    """A two-layer random llama with the real SmolLM2 tokenizer."""
    torch.set_num_threads(1)
    return load_backbone("tiny-llama", device=torch.device("cpu"))
