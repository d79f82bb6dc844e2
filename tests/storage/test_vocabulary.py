"""storage.vocabulary: every word is the string the API, the database and manifests used."""

from __future__ import annotations

import json

import pytest

from storage.errors import InvalidInput
from storage.vocabulary import (
    BASIS_ACTIVE,
    JOB_ACTIVE,
    JOB_FINISHED,
    BasisKind,
    BasisMode,
    BasisScope,
    BasisStatus,
    JobKind,
    JobStatus,
    PartStatus,
    SvdMethod,
    TokenScope,
    TrainEngine,
    parse,
    values,
)

# The strings of every earlier release (REST bodies, database rows, manifests).
WIRE = {
    BasisKind: ["task", "unified", "zeroshot", "global", "random"],
    BasisMode: ["raw", "delta", "centered"],
    BasisScope: ["layer", "global"],
    SvdMethod: ["gram", "randomized"],
    BasisStatus: ["pending", "running", "ready", "failed"],
    JobKind: ["basis", "recompute"],
    JobStatus: ["pending", "running", "succeeded", "failed", "cancelled"],
    PartStatus: ["staged", "committed"],
    TokenScope: ["read", "write", "admin"],
    TrainEngine: ["trainer", "loop"],
}


@pytest.mark.parametrize("vocabulary", list(WIRE), ids=lambda v: v.__name__)
def test_each_member_is_the_string_it_replaced(vocabulary):
    assert values(vocabulary) == WIRE[vocabulary]
    for member, text in zip(vocabulary, WIRE[vocabulary], strict=True):
        assert member == text and str(member) == text and f"{member}" == text
        assert hash(member) == hash(text)  # dicts keyed by strings find members and back
        assert json.dumps({member: member}) == json.dumps({text: text})
        assert parse(vocabulary, text, "word") is member


def test_a_bad_value_names_the_allowed_ones():
    with pytest.raises(InvalidInput, match=r"mode 'sideways' is not one of \['raw', 'delta'"):
        parse(BasisMode, "sideways", "mode")
    with pytest.raises(InvalidInput, match=r"scope None is not one of \['layer', 'global'\]"):
        parse(BasisScope, None, "scope")
    # A member of another vocabulary is not silently accepted for its string.
    with pytest.raises(InvalidInput, match=r"kind 'layer' is not one of"):
        parse(BasisKind, BasisScope.LAYER, "kind")


def test_among_narrows_the_accepted_members():
    stored = (BasisKind.TASK, BasisKind.GLOBAL)
    assert parse(BasisKind, "global", "kind", among=stored) is BasisKind.GLOBAL
    with pytest.raises(InvalidInput, match=r"kind 'random' is not one of \['task', 'global'\]"):
        parse(BasisKind, "random", "kind", among=stored)


def test_status_groups():
    assert [s.value for s in JOB_ACTIVE] == ["pending", "running"]
    assert [s.value for s in JOB_FINISHED] == ["succeeded", "failed", "cancelled"]
    assert [s.finished for s in JobStatus] == [False, False, True, True, True]
    assert [s.value for s in BASIS_ACTIVE] == ["pending", "running"]


def test_token_scopes_rank_read_write_admin():
    assert [s.rank for s in TokenScope] == [0, 1, 2]
