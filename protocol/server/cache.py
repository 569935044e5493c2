"""The server's persistent activation cache: sample id -> (A, Δ), in SQLite (the generation
server's `SequenceCache`: sample id -> its loss positions' states and r).

Tensors are stored as raw little-endian buffers with their dtype and shape in
columns, so reading never deserializes code. Inserts are idempotent by sample id:
a repeated upload is counted and ignored, never overwrites. SQLite's journal makes
every committed batch survive a crash or a restart. The database is created 0600 before
SQLite opens it; SQLite gives its -wal and -shm files the database's mode.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

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
    """Append-only store of uploaded samples, keyed by opaque sample id.

    `SCHEMA` is the table a subclass stores (`SequenceCache`: one row per sample, several
    positions each) and `VALUES` its float32 column next to the activations (Δ or r)."""

    SCHEMA = _SCHEMA
    VALUES = "delta"
    SHAPE = ("n_layers", "hidden_size")  # the columns giving one sample's states' shape

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(private_file(self.path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(self.SCHEMA)
        self._db.commit()

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def put_many(self, sample_ids: np.ndarray, activations: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Store the samples not cached yet, in one transaction; return which rows were new."""
        def row(i: int) -> tuple:
            act_bytes, act_dtype, delta_bytes = _row_values(activations[i], delta[i])
            return (act_bytes, act_dtype, activations.shape[1], activations.shape[2], delta_bytes, delta.shape[1])

        return self._insert(sample_ids, activations.dtype.name, row)

    def _insert(self, sample_ids: np.ndarray, act_dtype: str, row: Callable[[int], tuple]) -> np.ndarray:
        """Insert (id, arrival, *row(i)) for each sample id not cached yet, in one transaction."""
        if act_dtype not in _ALLOWED_DTYPES:
            raise ProtocolError(f"cannot cache activations of dtype {act_dtype}")
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
                rows.append((key, base + len(rows), *row(i)))
            if rows:
                marks = ",".join("?" * len(rows[0]))
                self._db.executemany(f"INSERT INTO samples VALUES ({marks})", rows)
        return new

    def count_new(self, sample_ids: np.ndarray) -> int:
        """How many distinct ids of `sample_ids` are not cached yet."""
        keys = {bytes(sid) for sid in sample_ids}
        return len(keys) - len(self._stored(list(keys)))

    def payload_bytes(self) -> int:
        """Bytes of every cached sample's activations and values (what a cached epoch loads)."""
        query = f"SELECT COALESCE(SUM(LENGTH(activations) + LENGTH({self.VALUES})), 0) FROM samples"
        return int(self._db.execute(query).fetchone()[0])

    def holds(self, sample_ids: np.ndarray, activations: np.ndarray, delta: np.ndarray) -> bool:
        """Whether every sample is cached already with exactly these values (a re-sent upload)."""
        return self._holds(sample_ids, lambda i: _row_values(activations[i], delta[i]))

    def conflicts(self, sample_ids: np.ndarray, activations: np.ndarray, delta: np.ndarray) -> bool:
        """Whether some sample is cached already with other values."""
        return self._conflicts(sample_ids, lambda i: _row_values(activations[i], delta[i]))

    def _holds(self, sample_ids: np.ndarray, values: Callable[[int], tuple[bytes, str, bytes]]) -> bool:
        """Whether every sample i is cached with exactly `values(i)` (see `_row_values`)."""
        keys = [bytes(sid) for sid in sample_ids]
        stored = self._stored(keys)
        return all(stored.get(key) == values(i) for i, key in enumerate(keys))

    def _conflicts(self, sample_ids: np.ndarray, values: Callable[[int], tuple[bytes, str, bytes]]) -> bool:
        """Whether some sample i is cached with values other than `values(i)`."""
        keys = [bytes(sid) for sid in sample_ids]
        stored = self._stored(keys)
        return any(key in stored and stored[key] != values(i) for i, key in enumerate(keys))

    def _stored(self, keys: list[bytes]) -> dict[bytes, tuple[bytes, str, bytes]]:
        """Cached rows among `keys`: id -> (activation bytes, their dtype, `VALUES` bytes)."""
        return self._select(keys, f"activations, act_dtype, {self.VALUES}")

    def _select(self, keys: list[bytes], columns: str) -> dict[bytes, tuple]:
        """Cached rows among `keys`: id -> the values of `columns`."""
        found: dict[bytes, tuple] = {}
        # SQLite limits the number of bound parameters per statement.
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            query = f"SELECT sample_id, {columns} FROM samples WHERE sample_id IN ({','.join('?' * len(chunk))})"
            found.update((row[0], tuple(row[1:])) for row in self._db.execute(query, chunk))
        return found

    def state_sizes(self, sample_ids: np.ndarray) -> dict[bytes, int]:
        """Bytes of the cached states of each of `sample_ids` the cache holds (id -> bytes)."""
        return {key: row[0] for key, row in self._select([bytes(s) for s in sample_ids], "LENGTH(activations)").items()}

    def states(self, sample_ids: np.ndarray) -> list[np.ndarray]:
        """The cached states of each sample, in the order given (each of shape `SHAPE`; every id must be cached)."""
        keys = [bytes(s) for s in sample_ids]
        rows = self._select(keys, f"activations, act_dtype, {', '.join(self.SHAPE)}")
        if len(rows) != len(set(keys)):
            raise ProtocolError("some sample ids are not cached")
        out = []
        for key in keys:
            data, dtype, *shape = rows[key]
            if dtype not in _ALLOWED_DTYPES:
                raise ProtocolError(f"cache row has unexpected dtype {dtype!r}")
            array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
            if array.size != int(np.prod(shape)):  # a corrupted row must fail loudly, not reshape into garbage
                raise ProtocolError("cache row size does not match its recorded shape")
            out.append(array.reshape(shape).astype(dtype))
        return out

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


def _row_values(activations: np.ndarray, values: np.ndarray) -> tuple[bytes, str, bytes]:
    """One sample as stored: little-endian activation bytes, their dtype, float32 value bytes (Δ or r)."""
    return (np.ascontiguousarray(activations, dtype=activations.dtype.newbyteorder("<")).tobytes(),
            activations.dtype.name, np.ascontiguousarray(values, dtype="<f4").tobytes())


_SEQUENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sample_id BLOB PRIMARY KEY,
    arrival INTEGER NOT NULL,
    activations BLOB NOT NULL,
    act_dtype TEXT NOT NULL,
    n_positions INTEGER NOT NULL,
    n_layers INTEGER NOT NULL,
    hidden_size INTEGER NOT NULL,
    residual BLOB NOT NULL
)
"""


class SequenceCache(ActivationCache):
    """The generation server's cache: sample id -> its loss positions' states (T, L, d) and r (T, d)."""

    SCHEMA = _SEQUENCE_SCHEMA
    VALUES = "residual"
    SHAPE = ("n_positions", "n_layers", "hidden_size")

    def put_sequences(self, sample_ids: np.ndarray, rows: list[slice], activations: np.ndarray,
                      residual: np.ndarray) -> np.ndarray:
        """Store the samples not cached yet (sample i owns `rows[i]`); return which samples were new."""
        def row(i: int) -> tuple:
            act_bytes, act_dtype, residual_bytes = _row_values(activations[rows[i]], residual[rows[i]])
            return (act_bytes, act_dtype, *activations[rows[i]].shape, residual_bytes)

        return self._insert(sample_ids, activations.dtype.name, row)

    def holds_sequences(self, sample_ids: np.ndarray, rows: list[slice], activations: np.ndarray,
                        residual: np.ndarray) -> bool:
        """Whether every sample is cached already with exactly these rows (a re-sent upload)."""
        return self._holds(sample_ids, lambda i: _row_values(activations[rows[i]], residual[rows[i]]))

    def conflicts_sequences(self, sample_ids: np.ndarray, rows: list[slice], activations: np.ndarray,
                            residual: np.ndarray) -> bool:
        """Whether some sample is cached already with other rows."""
        return self._conflicts(sample_ids, lambda i: _row_values(activations[rows[i]], residual[rows[i]]))

    def load_sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids (n, 16), counts (n,), activations (sum counts, L, d), residual (sum counts, d)) in arrival order."""
        rows = self._db.execute("SELECT sample_id, activations, act_dtype, n_positions, n_layers, hidden_size, "
                                "residual FROM samples ORDER BY arrival").fetchall()
        ids, counts, acts, residual = [], [], [], []
        for sid, act, dtype, positions, n_layers, hidden, signal in rows:
            if dtype not in _ALLOWED_DTYPES:
                raise ProtocolError(f"cache row has unexpected dtype {dtype!r}")
            act_array = np.frombuffer(act, dtype=np.dtype(dtype).newbyteorder("<"))
            signal_array = np.frombuffer(signal, dtype="<f4")
            if act_array.size != positions * n_layers * hidden or signal_array.size != positions * hidden:
                raise ProtocolError("cache row size does not match its recorded shape")
            ids.append(np.frombuffer(sid, dtype=np.uint8))
            counts.append(positions)
            acts.append(act_array.reshape(positions, n_layers, hidden))
            residual.append(signal_array.reshape(positions, hidden))
        if not rows:
            return np.zeros((0, 16), np.uint8), np.zeros(0, np.int64), np.zeros((0, 0, 0), np.float16), \
                np.zeros((0, 0), np.float32)
        return np.stack(ids), np.array(counts, np.int64), np.concatenate(acts), np.concatenate(residual)
