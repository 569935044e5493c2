"""The server's persistent activation cache: sample id -> (A, Δ), in SQLite.

Tensors are stored as raw little-endian buffers with their dtype and shape in
columns, so reading never deserializes code. Inserts are idempotent by sample id:
a repeated upload is counted and ignored, never overwrites. SQLite's journal makes
every committed batch survive a crash or a restart. The database is created 0600 before
SQLite opens it; SQLite gives its -wal and -shm files the database's mode.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from protocol.errors import ProtocolError
from protocol.files import private_file

_ALLOWED_DTYPES = {"float16", "float32"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sample_id BLOB PRIMARY KEY,
    arrival INTEGER NOT NULL,
    activations BLOB NOT NULL,
    act_dtype TEXT NOT NULL,
    n_layers INTEGER NOT NULL,
    hidden_size INTEGER NOT NULL,
    delta BLOB NOT NULL,
    n_classes INTEGER NOT NULL
)
"""


class ActivationCache:
    """Append-only store of uploaded samples, keyed by opaque sample id."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(private_file(self.path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def put_many(self, sample_ids: np.ndarray, activations: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Store the samples not cached yet, in one transaction; return which rows were new."""
        if activations.dtype.name not in _ALLOWED_DTYPES:
            raise ProtocolError(f"cannot cache activations of dtype {activations.dtype.name}")
        keys = [bytes(sid) for sid in sample_ids]
        new = np.zeros(len(keys), dtype=bool)
        with self._db:
            seen = set(self._stored(keys))
            base = len(self)
            rows = []
            for i, key in enumerate(keys):
                if key in seen:
                    continue
                seen.add(key)
                new[i] = True
                act_bytes, act_dtype, delta_bytes = _row_values(activations[i], delta[i])
                rows.append((key, base + len(rows), act_bytes, act_dtype, activations.shape[1],
                             activations.shape[2], delta_bytes, delta.shape[1]))
            self._db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?)", rows)
        return new

    def count_new(self, sample_ids: np.ndarray) -> int:
        """How many distinct ids of `sample_ids` are not cached yet."""
        keys = {bytes(sid) for sid in sample_ids}
        return len(keys) - len(self._stored(list(keys)))

    def holds(self, sample_ids: np.ndarray, activations: np.ndarray, delta: np.ndarray) -> bool:
        """Whether every sample is cached already with exactly these values (a re-sent upload)."""
        keys = [bytes(sid) for sid in sample_ids]
        stored = self._stored(keys)
        return all(stored.get(key) == _row_values(activations[i], delta[i]) for i, key in enumerate(keys))

    def _stored(self, keys: list[bytes]) -> dict[bytes, tuple[bytes, str, bytes]]:
        """Cached rows among `keys`: id -> (activation bytes, their dtype, Δ bytes)."""
        found: dict[bytes, tuple[bytes, str, bytes]] = {}
        # SQLite limits the number of bound parameters per statement.
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            query = ("SELECT sample_id, activations, act_dtype, delta FROM samples "
                     f"WHERE sample_id IN ({','.join('?' * len(chunk))})")
            found.update((row[0], tuple(row[1:])) for row in self._db.execute(query, chunk))
        return found

    def load_all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N,16) uint8, activations (N,L,d), delta (N,C) float32) in arrival order."""
        rows = self._db.execute(
            "SELECT sample_id, activations, act_dtype, n_layers, hidden_size, delta, n_classes "
            "FROM samples ORDER BY arrival"
        ).fetchall()
        if not rows:
            return np.zeros((0, 16), np.uint8), np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.float32)
        ids, acts, deltas = [], [], []
        for sid, act, dtype, n_layers, hidden, delta, n_classes in rows:
            if dtype not in _ALLOWED_DTYPES:
                raise ProtocolError(f"cache row has unexpected dtype {dtype!r}")
            act_array = np.frombuffer(act, dtype=np.dtype(dtype).newbyteorder("<"))
            delta_array = np.frombuffer(delta, dtype="<f4")
            # A corrupted row must fail loudly, not reshape into garbage.
            if act_array.size != n_layers * hidden or delta_array.size != n_classes:
                raise ProtocolError("cache row size does not match its recorded shape")
            ids.append(np.frombuffer(sid, dtype=np.uint8))
            acts.append(act_array.reshape(n_layers, hidden))
            deltas.append(delta_array)
        return np.stack(ids), np.stack(acts), np.stack(deltas)


def _row_values(activations: np.ndarray, delta: np.ndarray) -> tuple[bytes, str, bytes]:
    """One sample as stored: little-endian activation bytes, their dtype, float32 Δ bytes."""
    return (np.ascontiguousarray(activations, dtype=activations.dtype.newbyteorder("<")).tobytes(),
            activations.dtype.name, np.ascontiguousarray(delta, dtype="<f4").tobytes())
