"""The device's own cache of its forward passes over a dataset.

Sweeps, audits and benchmarks apply many mechanisms and attacks to the same device
outputs; the inference pass is the expensive part (~14 samples/s for SmolLM2 on two
CPU cores), so the device keeps pivot activations and label logits for a dataset on
its own disk. An entry is keyed by a digest of everything the outputs depend on and of
the *set* of texts (not their order), and holds one row per text with its sha256, so
any subset or reordering of a cached dataset is served from it: an audit's variants
upload different subsets of one training set (protected runs hold out a validation
split), and all of them, their validation splits and the attacker's public-backbone
passes over the same texts, read the one entry. The file is safetensors (no code runs
on load) and is checked against the key and shapes when read. This is device-side
state: it never goes to the server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from protocol.model.backbone import cache_root
from protocol.wire.codec import decode, encode
from protocol.device.forward_device import DeviceRole, PivotBatch
from protocol.errors import ProtocolError
from protocol.files import write_atomic
from protocol.device.shared_forwards import SharedForwards, device_spec, served_table
from protocol.data.tasks import Example

_FORMAT = "device-features/2"
# The device's own files: large datasets (8,000 samples × 30 layers × 576 × fp16 is 276 MB)
# exceed the wire limit, which guards against peers, not against the device itself.
_MAX_ENTRY_BYTES = 16 * 2**30


def text_digest(text: str) -> bytes:
    """The 32-byte sha256 identifying a text's row in a cache entry."""
    return hashlib.sha256(text.encode()).digest()


def _key(device: DeviceRole, digests: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    spec = {"format": _FORMAT, **device_spec(device)}
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for item in sorted(set(digests)):
        digest.update(item)
    return digest.hexdigest()


@dataclass
class _Entry:
    """One cached dataset: its outputs, the row of each text digest, and the forward seconds
    measured when it was computed (None: computed by this device just now, already counted)."""

    pivots: PivotBatch
    rows: dict[bytes, int]
    seconds: float | None

    def gather(self, digests: list[bytes]) -> PivotBatch:
        index = torch.tensor([self.rows[d] for d in digests], dtype=torch.long)
        return PivotBatch(self.pivots.activations[index], self.pivots.label_logits[index])


def _load(path, key: str) -> _Entry | None:
    """A trustworthy cache entry, or None (absent, damaged, another key, or an older format)."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = decode(path.read_bytes(), _MAX_ENTRY_BYTES)
        acts, logits, digests = tensors["activations"], tensors["label_logits"], tensors["text_sha256"]
        if metadata.get("key") != key or not acts.shape[0] == logits.shape[0] == digests.shape[0]:
            return None
        rows = {}
        for row, item in enumerate(digests):
            rows.setdefault(item.tobytes(), row)
        return _Entry(PivotBatch(activations=torch.from_numpy(acts.astype(np.float32)),
                                 label_logits=torch.from_numpy(logits)), rows, float(metadata["forward_seconds"]))
    except (ProtocolError, KeyError, ValueError):
        return None  # a damaged cache file is recomputed, never trusted


def _entry(device: DeviceRole, examples: list[Example], use_cache: bool = True) -> _Entry:
    """The dataset's entry: read from the cache, or computed (shortest texts first) and stored."""
    # Rows are found by digest and the key is of the set of texts, so the order is free: similar
    # lengths batched together pad less (a third less forward time on SST-2 than the given order).
    examples = sorted(examples, key=lambda e: len(e.text))
    digests = [text_digest(e.text) for e in examples]
    key = _key(device, digests)
    path = cache_root() / "device-features" / f"{key}.safetensors"
    if use_cache and (entry := _load(path, key)) is not None:
        return entry
    start = device.forward_seconds
    # DeviceRole.batches explicitly: a ForwardCachingDevice must not recurse into its own cache.
    result = PivotBatch.concatenate([pivots for _, pivots in DeviceRole.batches(device, examples, "device forward")])
    if use_cache:
        dtype = np.float16 if device.payload_dtype == "float16" else np.float32
        write_atomic(path, encode({"activations": result.activations.numpy().astype(dtype),
                                   "label_logits": result.label_logits.numpy().astype(np.float32),
                                   "text_sha256": np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 32)},
                                  {"key": key, "forward_seconds": repr(device.forward_seconds - start)}))
    rows: dict[bytes, int] = {}
    for row, item in enumerate(digests):
        rows.setdefault(item, row)
    return _Entry(result, rows, None)


def encode_dataset(device: DeviceRole, examples: list[Example], use_cache: bool = True) -> PivotBatch:
    """Pivot activations and label logits for every example, from the served table or the
    cache when possible."""
    table = served_table(device)
    if table is not None and all(table.holds(e.text) for e in examples):
        return table.pivots(examples)
    return _entry(device, examples, use_cache).gather([text_digest(e.text) for e in examples])


def cached_or_computed(device: DeviceRole, examples: list[Example],
                       use_cache: bool = True) -> tuple[PivotBatch, float | None]:
    """(outputs of `examples` as one entry, forward seconds measured when the cache entry was made;
    None if computed now)."""
    entry = _entry(device, examples, use_cache)
    return entry.gather([text_digest(e.text) for e in examples]), entry.seconds


class ForwardCachingDevice(DeviceRole):
    """A device that keeps its forward passes over each dataset in the device-side cache.

    `pools` are the datasets the device will be asked about (e.g. its training set and
    its evaluation set): a request for examples of a pool is served from the pool's one
    entry (computed in full on first use), whatever subset or order is asked for; other
    examples form an entry of their own. The outputs are identical to a fresh pass over
    the pool in the order it is computed in (shortest texts first: same batches, same
    rounding). Reused passes are counted apart (`reused_forwards`, with their share of the
    seconds measured when the entry was computed) so cost reports stay honest; passes this
    device computed itself are counted once, when computed.
    Inside `protocol.device.shared_forwards.serving`, the rows the shared table of the whole sweep
    or audit holds come from it instead, and the rest as above.
    """

    def __init__(self, *args: object, pools: Sequence[list[Example]] = (), **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._pools = [list(pool) for pool in pools if pool]
        self._pool_digests = [{text_digest(e.text) for e in pool} for pool in self._pools]
        self._loaded: dict[int, _Entry] = {}

    def _pool_entry(self, index: int) -> _Entry:
        if index not in self._loaded:
            self._loaded[index] = _entry(self, self._pools[index])
        return self._loaded[index]

    def outputs(self, examples: list[Example]) -> PivotBatch:
        """Forward outputs of `examples` in order: those the served table holds from it, each
        other from the first pool holding its text, the rest from an entry of their own."""
        table = served_table(self)
        held = [table is not None and table.holds(e.text) for e in examples]
        if all(held):
            return self._from_table(table, examples)
        activations: list[torch.Tensor | None] = [None] * len(examples)
        logits: list[torch.Tensor | None] = [None] * len(examples)
        for positions, part in self._parts(table, examples, held):
            for row, i in enumerate(positions):
                activations[i], logits[i] = part.activations[row], part.label_logits[row]
        return PivotBatch(activations=torch.stack(activations), label_logits=torch.stack(logits))

    def _from_table(self, table: SharedForwards, examples: list[Example]) -> PivotBatch:
        self.reused_forwards += len(examples)
        self.reused_forward_seconds += table.seconds_per_forward * len(examples)
        return table.pivots(examples)

    def _parts(self, table: SharedForwards | None, examples: list[Example],
               held: list[bool]) -> Iterator[tuple[list[int], PivotBatch]]:
        """(positions in `examples`, their outputs): the served table's rows, then each pool's."""
        if any(held):
            positions = [i for i, h in enumerate(held) if h]
            yield positions, self._from_table(table, [examples[i] for i in positions])
        rest = [i for i, h in enumerate(held) if not h]
        digests = {i: text_digest(examples[i].text) for i in rest}
        owners = {i: next((p for p, known in enumerate(self._pool_digests) if digests[i] in known), None)
                  for i in rest}
        strangers = [examples[i] for i in rest if owners[i] is None]
        if strangers:
            self._pools.append(strangers)
            self._pool_digests.append({text_digest(e.text) for e in strangers})
            owners = {i: len(self._pools) - 1 if owner is None else owner for i, owner in owners.items()}
        for owner in dict.fromkeys(owners.values()):
            positions = [i for i in rest if owners[i] == owner]
            entry = self._pool_entry(owner)
            if entry.seconds is not None:
                self.reused_forwards += len(positions)
                self.reused_forward_seconds += entry.seconds * len(positions) / len(self._pools[owner])
            yield positions, entry.gather([digests[i] for i in positions])

    def batches(self, examples: list[Example], description: str) -> Iterator[tuple[list[Example], PivotBatch]]:
        """The examples' outputs (shared, cached or computed once), served batch by batch."""
        if not examples:  # e.g. an upload resumed after its last batch was acknowledged
            return
        pivots = self.outputs(examples)
        for start in range(0, len(examples), self.batch_size):
            stop = start + self.batch_size
            yield examples[start:stop], PivotBatch(pivots.activations[start:stop], pivots.label_logits[start:stop])
