"""What a training mode is: one way of getting a deployable side output.

A mode declares the messages its device and server exchange, the fields its server
view holds (attacks declare the fields they need), the server endpoint it runs (none
for a mode that uploads nothing), and how the device turns the server's answer into a
`SideOutput` once epoch 1 is uploaded. Everything else (data, hold-out, forward
passes, mechanisms, upload with resume, safeguard, evaluation, model file, summary)
is the one run path in `secure_assist.training.run`, the same for every mode and channel.

A mode's module imports nothing torch- or TenSEAL-backed at its top: `secure-assist serve`
reads the registry before it listens, and pays for those imports when a device opens a mode.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from protocol.wire.channel import Channel
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.limits import ServerLimits
from protocol.wire.messages import Message
from protocol.server.training_settings import ServerTraining

if TYPE_CHECKING:  # torch-backed: a mode module imports them where it runs, so `serve` listens first
    from protocol.device.forward_device import ForwardDevice
    from protocol.model.side_output import SideOutput


class DeviceProtections(Protocol):
    """What a mode's device session may ask of the device's protections (the mechanism chain
    of `secure_assist.mechanisms`): a stage by name, e.g. the CKKS key holder's 'encrypt'."""

    def stage(self, name: str) -> Any:
        """The mechanism of that stage, or None."""


@dataclass
class TrainOutcome:
    """What a mode's training step hands back to the run path."""

    side: SideOutput
    epochs_done: int
    cache_samples: int
    final_train_loss: float | None = None
    device_seconds: float = 0.0  # device work of this step beyond the forward passes (e.g. decryption)
    details: dict[str, Any] = field(default_factory=dict)  # mode-specific summary keys


class TrainingMode:
    """Base class: subclasses set the class attributes and implement `make_server` and `train`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Every message type this mode's device and server exchange (checked against the registry).
    messages: ClassVar[tuple[type[Message], ...]] = ()
    # The fields of `protocol.server.transcript.VIEW_FIELDS` this mode's server views hold.
    view_fields: ClassVar[frozenset[str]] = frozenset()
    # False: nothing leaves the device (the "server" runs on the device, its bytes are not traffic).
    uploads: ClassVar[bool] = True
    # A mechanism stage the chain must have (e.g. 'encrypt' for a mode that only takes ciphertexts).
    required_stage: ClassVar[str | None] = None
    # The task kind this mode trains for (secure_assist.task_kinds.TASK_KINDS).
    task_kind: ClassVar[str] = "classification"
    # Whether a device may name a pool in its Hello (`protocol.modes.pooled`).
    pooled: ClassVar[bool] = False
    # Mechanisms this mode cannot run, by name, and why in one line (a mechanism's `supports` reads it).
    refused_mechanisms: ClassVar[dict[str, str]] = {}

    def make_server(self, workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                    stop: threading.Event | None = None) -> RecordingEndpoint:
        """This mode's server endpoint for one device, its view kept in `workdir` (`limits` None: in
        process, where the device is this process; `stop`: set when the hosting server shuts down)."""
        raise NotImplementedError

    def server_details(self, endpoint: RecordingEndpoint) -> dict[str, float]:
        """Mode-specific numbers only the server knows (reported when it runs in process)."""
        return {}

    def open(self, channel: Channel, device: ForwardDevice) -> None:
        """After the server accepted the mode, before the first upload: what the device sends
        once per connection (nothing by default)."""

    def train(self, channel: Channel, epochs: int, mechanisms: DeviceProtections) -> TrainOutcome:
        """After epoch 1 is uploaded: have the server finish, fetch and rebuild the side output."""
        raise NotImplementedError
