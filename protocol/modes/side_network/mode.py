"""`side_network`: PAE proper. The server trains the additive side network φ on Δ from
its activation cache (epochs >= 2 need no device work) and the device downloads φ."""

from __future__ import annotations

import threading
from pathlib import Path

from typing import TYPE_CHECKING

from protocol.errors import ProtocolError
from protocol.wire.channel import Channel
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.limits import ServerLimits
from protocol.wire.messages import (
    ErrorReply, FetchWeights, Hello, ModeAccepted, RefreshedTargets, SideWeights, TrainReport, TrainUntil, Upload,
    UploadAck, expect,
)
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import DELTA, PIVOT_ACTIVATIONS, SIDE_NETWORK
from protocol.modes.base import DeviceProtections, TrainingMode, TrainOutcome

if TYPE_CHECKING:
    from protocol.model.side_output import SideOutput


class SideNetworkMode(TrainingMode):
    """The server trains φ; the device fetches it."""

    name = "side_network"
    description = "PAE: the server trains the side network on uploaded pivot states and Δ"
    messages = (Hello, ModeAccepted, Upload, RefreshedTargets, UploadAck, TrainUntil, TrainReport, FetchWeights,
                SideWeights, ErrorReply)
    view_fields = frozenset({PIVOT_ACTIVATIONS, DELTA, SIDE_NETWORK})

    def make_server(self, workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                    stop: threading.Event | None = None) -> RecordingEndpoint:
        from protocol.server.side_tuning import SideTuningServer  # torch: see protocol.modes.base

        return SideTuningServer(workdir, training, limits=limits, stop=stop)

    def rebuild(self, weights: SideWeights) -> SideOutput:
        """The side output that the fetched weights describe."""
        from protocol.model.side_network import AdditiveSideNetwork, network_from_arrays

        return network_from_arrays(weights.state, weights.architecture, AdditiveSideNetwork)

    def training_report(self, channel: Channel, epochs: int) -> TrainReport:
        """Have the server train until `epochs` are done, asking again while a reply (bounded in time by the
        server's `train_reply_seconds`) says fewer are."""
        # TrainUntil is idempotent: a request retried after a reconnect never over-trains.
        report = expect(channel.request(TrainUntil(epochs_total=epochs)), TrainReport)
        while report.epochs_done < epochs:
            done = report.epochs_done
            report = expect(channel.request(TrainUntil(epochs_total=epochs)), TrainReport)
            if report.epochs_done <= done:  # a server that never gets there cannot hold the device for ever
                raise ProtocolError(f"the server's training stopped at {report.epochs_done} of {epochs} epochs")
        return report

    def train(self, channel: Channel, epochs: int, mechanisms: DeviceProtections) -> TrainOutcome:
        report = self.training_report(channel, epochs)
        weights = expect(channel.request(FetchWeights()), SideWeights)
        return TrainOutcome(side=self.rebuild(weights),
                            epochs_done=report.epochs_done, cache_samples=report.samples,
                            final_train_loss=report.loss if epochs > 1 else None)
