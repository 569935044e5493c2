"""Generation modes: PAE for free-text answers, and its on-device reference.

`generation`: per sample the device uploads the selected layers' states and
r_t = W_Uᵀ(onehot(y_t) − softmax(z_t)) at every loss position (the positions whose next
token is an answer token), once; it sends the public head's Gram matrix G = W_UᵀW_U first.
The server trains the side network (a hidden-space correction s_t per position, the same
gated additive adapters shared across positions) on PAE's MSE through the head from its
cache, and the device fetches it. `generation_local` runs the same server code on the
device: nothing leaves it (the "what does the server buy?" reference).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.wire.channel import Channel
from protocol.server.endpoint import RecordingEndpoint
from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.server.limits import ServerLimits
from protocol.wire.messages import (
    ErrorReply, FetchWeights, Hello, ModeAccepted, RefreshedTargets, SideWeights, TrainReport, TrainUntil, UploadAck,
    expect,
)
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ANSWER_ACTIVATIONS, HIDDEN_CORRECTION, RESIDUAL
from protocol.modes.side_network.mode import SideNetworkMode

if TYPE_CHECKING:
    from protocol.model.side_output import SideOutput
    from protocol.modes.generation.device import GenerationDevice


class GenerationMode(SideNetworkMode):
    """The server trains the hidden-space correction; the device fetches it."""

    name = "generation"
    description = "PAE for free-text answers: states and r_t at the answer positions, a hidden-space correction"
    messages = (Hello, ModeAccepted, HeadGram, GenerationUpload, RefreshedTargets, UploadAck, TrainUntil, TrainReport,
                FetchWeights, SideWeights, ErrorReply)
    view_fields = frozenset({ANSWER_ACTIVATIONS, RESIDUAL, HIDDEN_CORRECTION})
    task_kind = "generation"

    def make_server(self, workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                    stop: threading.Event | None = None) -> RecordingEndpoint:
        from protocol.modes.generation.server import GenerationServer  # torch: see protocol.modes.base

        return GenerationServer(workdir, training, limits=limits, stop=stop)

    def rebuild(self, weights: SideWeights) -> SideOutput:
        from protocol.model.side_network import HiddenCorrection, network_from_arrays

        return network_from_arrays(weights.state, weights.architecture, HiddenCorrection)

    def open(self, channel: Channel, device: GenerationDevice) -> None:
        # Idempotent on the server: a resumed device sends the same matrix again.
        expect(channel.request(device.head_gram()), UploadAck)

