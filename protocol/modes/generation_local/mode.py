"""`generation_local`: the generation side network trained on the device itself (the reference
for `generation`, as `device_local` is for `side_network`)."""

from __future__ import annotations

from protocol.modes.generation.mode import GenerationMode


class GenerationLocalMode(GenerationMode):
    """The generation side network trained on the device; no server, no traffic, no server view."""

    name = "generation_local"
    description = "the generation side network trained on the device itself: nothing leaves the device"
    view_fields = frozenset()
    uploads = False
