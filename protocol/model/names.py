"""Names other modules and the command line read without loading a model.

These live apart from `protocol.model.backbone` and `protocol.model.input_maps` because
those import torch and transformers (seconds), and the CLI builds its flags and help
from these names before any command runs.
"""

from __future__ import annotations

# The embedded backbone (`protocol.model.backbone.load_backbone` without a name).
DEFAULT_BACKBONE = "smollm2-135m"
# The mechanism's name (secure_assist.mechanisms): attacks read it from the public
# knowledge (the server knows which mechanism runs, not its secret).
ROTATION_MECHANISM = "activation_rotation"
