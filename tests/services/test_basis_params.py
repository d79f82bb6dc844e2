"""services.basis_params: the typed `bases.params` column reads and writes the same JSON."""

from __future__ import annotations

import json

import pytest

from services.basis_params import BasisParams
from storage.errors import InvalidInput
from storage.vocabulary import BasisMode, BasisScope

# `bases.params` as earlier releases wrote them (services.bases.validate_order), key order too.
OLD_ROWS = [
    {"rank": 8, "mode": "delta", "scope": "layer", "executor": "local", "uid": "a" * 32,
     "selection": "all", "tasks": ["sst2"]},
    {"rank": 4, "mode": "raw", "scope": "global", "executor": "dask", "uid": "b" * 32,
     "selection": [1, 3, 5], "tasks": ["sst2"]},
    {"rank": 2, "mode": "centered", "scope": "layer", "executor": "local", "uid": "c" * 32,
     "selection": "last", "tasks": ["mrpc", "rte"], "held_out": "sst2"},
    {"rank": 3, "mode": None, "scope": None, "executor": "local", "uid": "d" * 32, "seed": 7},
    {"rank": 3, "method": "gram"},  # a row this model does not fully know: kept as it is
]  # fmt: skip


@pytest.mark.parametrize("stored", OLD_ROWS)
def test_an_old_row_reads_and_writes_back_byte_for_byte(stored):
    params = BasisParams.from_json(stored)
    assert json.dumps(params.to_json()) == json.dumps(stored)


def test_fields_are_typed():
    params = BasisParams.from_json(OLD_ROWS[2])
    assert params.mode is BasisMode.CENTERED and params.scope is BasisScope.LAYER
    assert params.source_tasks == ["mrpc", "rte"] and params.held_out == "sst2"
    random = BasisParams.from_json(OLD_ROWS[3])
    assert random.mode is None and random.seed == 7 and random.source_tasks == []


def test_changes_are_written_where_the_key_always_was():
    params = BasisParams.from_json(OLD_ROWS[0]).with_changes(uid="e" * 32, executor="ray")
    assert list(params.to_json()) == list(OLD_ROWS[0])
    assert params.to_json()["uid"] == "e" * 32 and params.to_json()["executor"] == "ray"


def test_a_new_order_writes_the_keys_of_old_ones():
    task = BasisParams(rank=8, mode=BasisMode.DELTA, scope=BasisScope.LAYER, executor="local")
    task = task.with_changes(uid="a" * 32, selection="all", tasks=["sst2"])
    assert json.dumps(task.to_json()) == json.dumps(OLD_ROWS[0])
    random = BasisParams(rank=3, mode=BasisMode.DELTA, scope=BasisScope.LAYER, executor="local")
    random = random.with_changes(uid="d" * 32).with_changes(seed=7, mode=None, scope=None)
    assert json.dumps(random.to_json()) == json.dumps(OLD_ROWS[3])


def test_unreadable_parameters_are_invalid_input():
    with pytest.raises(InvalidInput, match="cannot be read"):
        BasisParams.from_json({"rank": 3, "mode": "sideways"})
    with pytest.raises(InvalidInput, match="cannot be read"):
        BasisParams.from_json({"k": 3, "seed": 7})
