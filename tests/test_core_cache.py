"""The server's activation cache: idempotent, persistent, corruption-evident."""

import sqlite3

import numpy as np
import pytest

from protocol.server.cache import ActivationCache
from protocol.device.forward_device import new_sample_ids
from protocol.errors import ProtocolError


def test_idempotent_and_persistent(tmp_path) -> None:
    ids = new_sample_ids(4)
    acts = np.arange(4 * 2 * 3, dtype=np.float16).reshape(4, 2, 3)
    delta = np.arange(8, dtype=np.float32).reshape(4, 2)
    cache = ActivationCache(tmp_path / "c.sqlite")
    assert cache.put_many(ids[:3], acts[:3], delta[:3]).tolist() == [True, True, True]
    assert cache.put_many(ids, acts, delta).tolist() == [False, False, False, True]
    cache.close()
    reopened = ActivationCache(tmp_path / "c.sqlite")
    got_ids, got_acts, got_delta = reopened.load_all()
    assert len(reopened) == 4
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_acts, acts)
    np.testing.assert_array_equal(got_delta, delta)


def test_corrupted_row_fails_loudly(tmp_path) -> None:
    cache = ActivationCache(tmp_path / "c.sqlite")
    cache.put_many(new_sample_ids(1), np.zeros((1, 2, 3), np.float16), np.zeros((1, 2), np.float32))
    cache.close()
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        db.execute("UPDATE samples SET activations = x'0000'")
    with pytest.raises(ProtocolError, match="does not match"):
        ActivationCache(tmp_path / "c.sqlite").load_all()


def test_holds_only_exactly_the_cached_values(tmp_path) -> None:
    # `holds` decides whether an upload is a re-send, recorded in the view by ids and digest only: one
    # that reuses cached ids with other values (a poisoning attempt) must stay in the view in full.
    ids = new_sample_ids(3)
    acts = np.ones((3, 2, 3), np.float16)
    delta = np.zeros((3, 2), np.float32)
    cache = ActivationCache(tmp_path / "c.sqlite")
    cache.put_many(ids[:2], acts[:2], delta[:2])
    assert cache.holds(ids[:2], acts[:2], delta[:2])
    assert not cache.holds(ids[:2], acts[:2], delta[:2] + 1)
    assert not cache.holds(ids[:2], acts[:2] * 2, delta[:2])
    assert not cache.holds(ids, acts, delta)  # one id not cached yet
    cache.close()
