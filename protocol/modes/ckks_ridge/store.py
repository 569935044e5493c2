"""The CKKS mode's uploads on disk: the declared public context and one file per encrypted block.

On disk, so a device's state survives its server role being released when it is idle
(and a server restart), and the ciphertexts are not held in memory between fits: only
the activations (the PCA needs them all) and the sample ids stay in memory. Blocks are
written with numpy's `.npz` format and read back with `allow_pickle=False`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from protocol.files import private_dir, write_atomic
from protocol.modes.ckks_ridge.context import split_buffer
from protocol.modes.ckks_ridge.messages import EncryptedUpload

BLOCKS_DIR = "ckks_blocks"
CONTEXT_FILE = "public_context"


class BlockStore:
    """The encrypted blocks one device uploaded, in upload order."""

    def __init__(self, workdir: Path) -> None:
        self.root = Path(workdir) / BLOCKS_DIR
        context = self.root / CONTEXT_FILE
        self.context: bytes | None = context.read_bytes() if context.is_file() else None
        self.activations: list[np.ndarray] = []
        self.block_samples: list[int] = []
        self.sample_ids: set[bytes] = set()
        self.layers: tuple[int, ...] | None = None
        self.classes = 0
        self.ciphertext_bytes = 0
        for path in sorted(self.root.glob("block-*.npz")):
            with np.load(path, allow_pickle=False) as block:
                self._hold(block["sample_ids"], block["activations"], tuple(int(i) for i in block["layers"]),
                           block["ciphertext_sizes"])

    def __len__(self) -> int:
        return len(self.block_samples)

    def add(self, upload: EncryptedUpload) -> None:
        """Store one validated block (the context first, on the first block)."""
        private_dir(self.root)
        if self.context is None:
            self.context = upload.public_context.tobytes()
            write_atomic(self.root / CONTEXT_FILE, self.context)
        buffer = io.BytesIO()
        np.savez(buffer, sample_ids=upload.sample_ids, activations=upload.activations,
                 layers=np.array(upload.layers, dtype=np.int64), ciphertexts=upload.ciphertexts,
                 ciphertext_sizes=upload.ciphertext_sizes)
        write_atomic(self.root / f"block-{len(self):08d}.npz", buffer.getvalue())
        self._hold(upload.sample_ids, upload.activations, upload.layers, upload.ciphertext_sizes)

    def ciphertexts(self, block: int) -> list[bytes]:
        """The per-class ciphertexts of one block, read from disk."""
        with np.load(self.root / f"block-{block:08d}.npz", allow_pickle=False) as stored:
            return split_buffer(stored["ciphertexts"], stored["ciphertext_sizes"])

    def _hold(self, ids: np.ndarray, activations: np.ndarray, layers: tuple[int, ...], sizes: np.ndarray) -> None:
        self.sample_ids |= {bytes(i) for i in ids}
        self.activations.append(activations)
        self.block_samples.append(len(ids))
        self.layers = layers
        self.classes = len(sizes)
        self.ciphertext_bytes += int(sizes.sum())
