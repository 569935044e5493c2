"""`ckks_ridge`: Δ leaves the device only CKKS-encrypted (the `he_ckks` mechanism, the
chain's encrypt stage). The server fits a ridge head on its own label-free features
under encryption and returns enc(W); the device decrypts W and deploys the head."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from protocol.wire.channel import Channel
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.limits import ServerLimits
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitReply, HeFitRequest
from protocol.wire.messages import ErrorReply, Hello, ModeAccepted, UploadAck, expect
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ENCRYPTED_HEAD, PIVOT_ACTIVATIONS
from protocol.modes.base import DeviceProtections, TrainingMode, TrainOutcome

if TYPE_CHECKING:
    from protocol.modes.ckks_ridge.head import RidgeHead


class HeadEncryptor(Protocol):
    """The encrypt stage this mode needs: it holds the secret key on the device."""

    encrypt_seconds: float
    ciphertext_bytes: int
    uploaded_samples: int

    def fit_request(self) -> HeFitRequest:
        """The fit request with the public context."""

    def decrypt_head(self, reply: HeFitReply) -> RidgeHead:
        """The device's head from the encrypted reply."""


class CkksRidgeMode(TrainingMode):
    """The server fits enc(W) on encrypted Δ; the device decrypts its head."""

    name = "ckks_ridge"
    description = "HE head: Δ encrypted with CKKS, the server fits a ridge head under encryption"
    messages = (Hello, ModeAccepted, EncryptedUpload, UploadAck, HeFitRequest, HeFitReply, ErrorReply)
    view_fields = frozenset({PIVOT_ACTIVATIONS, ENCRYPTED_HEAD})
    required_stage = "encrypt"

    def make_server(self, workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                    stop: threading.Event | None = None) -> RecordingEndpoint:
        from protocol.modes.ckks_ridge.server import HeHeadServer  # TenSEAL and torch: see protocol.modes.base

        return HeHeadServer(workdir, limits=limits, stop=stop)

    def server_details(self, endpoint: RecordingEndpoint) -> dict[str, float]:
        return {"he_server_fit_seconds": endpoint.fit_seconds}

    def train(self, channel: Channel, epochs: int, mechanisms: DeviceProtections) -> TrainOutcome:
        encryptor: HeadEncryptor = mechanisms.stage("encrypt")
        request = encryptor.fit_request()
        reply = expect(channel.request(request), HeFitReply)
        start = time.perf_counter()
        head = encryptor.decrypt_head(reply)
        decrypt_seconds = time.perf_counter() - start
        n = encryptor.uploaded_samples
        return TrainOutcome(
            side=head, epochs_done=1, cache_samples=n, device_seconds=encryptor.encrypt_seconds + decrypt_seconds,
            details={"he_device_encrypt_ms_per_sample": 1000 * encryptor.encrypt_seconds / max(1, n),
                     "he_ciphertext_bytes_per_sample": encryptor.ciphertext_bytes / max(1, n),
                     "he_public_context_bytes": int(len(request.public_context)),
                     "he_device_decrypt_seconds": decrypt_seconds,
                     "he_fit_reply_bytes": int(len(reply.ciphertexts)),
                     "he_fit_reply_ciphertexts": int(len(reply.ciphertext_sizes)),
                     "he_features": int(reply.components.shape[0])})
