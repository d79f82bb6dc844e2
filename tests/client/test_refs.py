"""`BasisRef` and `RegistryConfig`: validation, the JSON round trip, refs from what the registry
serves, and `Client.pull_basis` / `resolve_basis` taking a ref (a pinned one refuses other
bytes)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from client.refs import BasisRef, RegistryConfig
from storage.errors import InvalidInput
from tests.client.test_client import _ready_basis

SHA_A, SHA_B = "a" * 64, "0123456789abcdef" * 4


def _manifest(**over):
    """A basis as GET /v1/tasks/{id}/bases/{kind} answers (the fields a ref reads)."""
    manifest = {
        "task_id": "sst2",
        "kind": "task",
        "version": 3,
        "status": "ready",
        "aliases": ["latest"],
        "layers": [
            {"name": "layer.0", "shape": [8, 2], "sha256": SHA_A, "nbytes": 64},
            {"name": "layer.1", "shape": [8, 2], "sha256": SHA_B, "nbytes": 64},
        ],
    }
    return {**manifest, **over}


def test_round_trip_through_json_and_pickle():
    ref = BasisRef("sst2", "task", version=3, layer_sha256={"layer.0": SHA_A})
    again = BasisRef.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref and again.resolved
    assert pickle.loads(pickle.dumps(ref)) == ref  # RunSpecs travel to worker processes
    assert hash(again) == hash(ref)
    request = BasisRef.from_dict({"task": "sst2", "alias": "production"})
    assert request == BasisRef("sst2", "task", alias="production")
    assert not request.resolved and request.layer_sha256 == {}
    assert (str(request), str(ref)) == ("sst2/task @production", "sst2/task v3")
    assert BasisRef("sst2").selector == "@latest"


def test_a_ref_keeps_its_own_copy_of_the_hashes():
    shas = {"layer.0": SHA_A}
    ref = BasisRef("sst2", version=1, layer_sha256=shas)
    shas["layer.0"] = SHA_B
    assert ref.layer_sha256 == {"layer.0": SHA_A}
    assert copy.deepcopy(ref) == ref


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": ""}, "needs a task ID"),
        ({"task": "t", "kind": ""}, "needs a kind"),
        ({"task": "t", "version": 0}, "integer >= 1"),
        ({"task": "t", "version": True}, "integer >= 1"),
        ({"task": "t", "version": "3"}, "integer >= 1"),
        ({"task": "t", "alias": ""}, "non-empty name"),
        ({"task": "t", "version": 2, "alias": "prod"}, "version or an alias, not both"),
        ({"task": "t", "layer_sha256": {"layer.0": "abc"}}, "valid sha256"),
    ],
)
def test_bad_refs_are_refused_with_a_clear_error(fields, message):
    with pytest.raises(InvalidInput, match=message):
        BasisRef(**fields)


def test_from_dict_refuses_unknown_or_missing_keys():
    with pytest.raises(InvalidInput, match="unknown basis ref keys"):
        BasisRef.from_dict({"task": "t", "versoin": 2})
    with pytest.raises(InvalidInput, match="needs a task"):
        BasisRef.from_dict({"kind": "task"})
    with pytest.raises(InvalidInput, match="JSON object"):
        BasisRef.from_dict(["t"])  # type: ignore[arg-type]


def test_from_the_registry_json():
    ref = BasisRef.from_manifest(_manifest())
    assert ref == BasisRef(
        "sst2", "task", version=3, layer_sha256={"layer.0": SHA_A, "layer.1": SHA_B}
    )
    assert ref.alias is None  # pinned by version: the alias may move on
    with pytest.raises(InvalidInput, match="not ready"):
        BasisRef.from_manifest(_manifest(layers=None, status="running"))
    with pytest.raises(InvalidInput, match="not a basis manifest"):
        BasisRef.from_manifest({"kind": "task"})


def test_check_manifest_refuses_another_basis_or_other_bytes():
    served = _manifest()
    assert BasisRef("sst2").check_manifest(served).version == 3
    assert BasisRef("sst2", version=3, layer_sha256={"layer.1": SHA_B}).check_manifest(served)
    with pytest.raises(InvalidInput, match="served sst2/task v3"):
        BasisRef("sst2", version=2).check_manifest(served)
    with pytest.raises(InvalidInput, match="served"):
        BasisRef("imdb").check_manifest(served)
    with pytest.raises(InvalidInput, match=r"layers \['layer.0'\]"):
        BasisRef("sst2", version=3, layer_sha256={"layer.0": SHA_B}).check_manifest(served)


def test_from_a_run_reference():
    reference = {
        "kind": "task",
        "scope": "layer",
        "task": "sst2",
        "version": 3,
        "layers": {"layer.0": {"shape": [8, 2], "sha256": SHA_A}},
        "registry": "http://r",
        "alias": "latest",
    }
    assert BasisRef.from_reference(reference) == BasisRef(
        "sst2", version=3, layer_sha256={"layer.0": SHA_A}
    )
    assert BasisRef.from_reference({**reference, "kind": "random"}) is None
    assert BasisRef.from_reference({**reference, "task": None}) is None
    assert BasisRef.from_reference(None) is None
    local = BasisRef.from_reference({**reference, "version": None})
    assert local is not None and local.version is None and local.alias == "latest"


def test_registry_config_checks_the_url_and_hides_the_token():
    config = RegistryConfig("http://127.0.0.1:8000", token="tsk_secret")
    assert "tsk_secret" not in repr(config)
    with pytest.raises(InvalidInput, match="http"):
        RegistryConfig("127.0.0.1:8000")


def test_pull_and_resolve_by_ref(client, tmp_path, layout):
    _ready_basis(client, tmp_path, layout)
    resolved = client.resolve_basis(BasisRef("a"))
    manifest = client.basis("a", "task")
    assert resolved == BasisRef.from_manifest(manifest) and resolved.version == 1
    assert resolved.layer_sha256 == {i["name"]: i["sha256"] for i in manifest["layers"]}
    pulled = client.pull_basis(resolved)
    assert pulled.version == 1
    assert {n: p.name for n, p in pulled.files.items()} == dict(resolved.layer_sha256)
    tensors = client.load_basis(resolved, layers=["layer.0"])
    assert list(tensors) == ["layer.0"]
    # A pinned ref whose recorded bytes differ is refused, online and from the cache alike.
    forged = BasisRef("a", version=1, layer_sha256={"layer.0": SHA_A})
    with pytest.raises(InvalidInput, match="do not match"):
        client.pull_basis(forged)
    with pytest.raises(InvalidInput, match="do not match"):
        client.pull_basis(forged, local_files_only=True)
