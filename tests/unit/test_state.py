"""Per-entity column state (models/state.py): slots, growth, snapshot/restore, bounded memory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.params import ProcessorParams
from models.state import EntityState

P = ProcessorParams()


def _keys(n: int, prefix: str = "meter\x1fm") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_slots_are_stable_and_allocated_once_per_key() -> None:
    st = EntityState(P, capacity=16)
    a = st.slots_for(["k1", "k2", "k1"], ["meter", "feeder", "meter"])
    assert a.tolist() == [0, 1, 0]
    b = st.slots_for(["k2", "k3", "k1"], ["feeder", "meter", "meter"])
    assert b.tolist() == [1, 2, 0]
    assert st.size == 3 and st.keys == ["k1", "k2", "k3"]
    assert st.kinds == ["meter", "feeder", "meter"]


def test_fresh_slots_start_from_the_initial_values() -> None:
    st = EntityState(P, capacity=16)
    (slot,) = st.slots_for(["k"], ["meter"])
    assert st.cols["count"][slot] == 0
    assert np.isnan(st.cols["level"][slot])
    assert np.all(np.isnan(st.cols["profile"][slot]))
    assert np.all(st.cols["profile_n"][slot] == 0)


def test_growth_keeps_existing_rows() -> None:
    st = EntityState(P, capacity=16)
    st.slots_for(_keys(10), ["meter"] * 10)
    st.cols["count"][:10] = np.arange(10)
    st.cols["profile"][3, 5] = 1.25
    st.slots_for(_keys(100), ["meter"] * 100)
    assert st.size == 100 and st.capacity >= 100
    np.testing.assert_array_equal(st.cols["count"][:10], np.arange(10))
    assert st.cols["count"][10:100].sum() == 0
    assert st.cols["profile"][3, 5] == np.float32(1.25)


def test_memory_is_linear_in_entities_and_independent_of_anything_else() -> None:
    st = EntityState(P, capacity=16)
    per_row = st.nbytes() / st.capacity
    for n in (10, 100, 1000, 3000):
        st.slots_for(_keys(n), ["meter"] * n)
        assert st.nbytes() == pytest.approx(per_row * st.capacity)
        assert st.capacity < 2 * max(n, 16) + 1  # doubling: at most twice what is used
    before = st.nbytes()
    st.slots_for(_keys(3000), ["meter"] * 3000)  # the same entities again
    assert st.nbytes() == before


def test_snapshot_restore_round_trip_is_exact_and_picklable() -> None:
    st = EntityState(P, capacity=16)
    st.slots_for(_keys(40), ["meter"] * 20 + ["feeder"] * 20)
    rng = np.random.default_rng(0)
    for arr in st.cols.values():
        if arr.dtype.kind == "f":
            arr[: st.size] = rng.normal(size=arr[: st.size].shape)
        else:
            arr[: st.size] = rng.integers(0, 100, size=arr[: st.size].shape)
    snap = pickle.loads(pickle.dumps(st.snapshot()))  # noqa: S301 - our own bytes
    back = EntityState.restore(P, snap)
    assert back.keys == st.keys and back.kinds == st.kinds and back.size == st.size
    for name, arr in st.cols.items():
        np.testing.assert_array_equal(back.cols[name][: back.size], arr[: st.size], err_msg=name)
    # the restored state keeps allocating after the restored keys
    assert back.slots_for(["new"], ["meter"]).tolist() == [40]
    assert back.slots_for([st.keys[7]], ["meter"]).tolist() == [7]


def test_snapshot_is_a_copy() -> None:
    st = EntityState(P, capacity=16)
    st.slots_for(["k"], ["meter"])
    snap = st.snapshot()
    st.cols["count"][0] = 99
    st.keys.append("x")
    assert snap["cols"]["count"][0] == 0  # type: ignore[index]
    assert snap["keys"] == ["k"]


def test_restore_refuses_a_snapshot_of_other_parameters() -> None:
    st = EntityState(P, capacity=16)
    st.slots_for(["k"], ["meter"])
    with pytest.raises(ValueError, match="ring_value"):
        EntityState.restore(ProcessorParams(window=P.window + 1), st.snapshot())


def test_empty_state_round_trips() -> None:
    back = EntityState.restore(P, EntityState(P).snapshot())
    assert back.size == 0 and back.keys == []
    assert back.slots_for(["a"], ["meter"]).tolist() == [0]
