"""RunSpec's basis fields (one BasisRef, one RegistryConfig), the old flat keywords folded into
them, and read_run on run.json files written before ``basis_ref`` existed. Nothing trains."""

from __future__ import annotations

import json
import warnings

import pytest

from client.refs import BasisRef, RegistryConfig
from storage.errors import InvalidInput
from worker.finetune import runner
from worker.finetune.runner import RunSpec, read_run
from worker.finetune.spec import basis_from_flags

SHA = "c" * 64
URL = "http://127.0.0.1:9"


def test_the_typed_fields_need_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = RunSpec(task="t", method="unified", registry=RegistryConfig(URL, token="x"))
    # Beside a registry the ref is filled in: this task's basis of the method's kind.
    assert spec.basis_ref == BasisRef("t", "unified")
    assert RunSpec(task="t", method="full", registry=RegistryConfig(URL)).basis_ref == BasisRef(
        "t", "task"
    )


@pytest.mark.parametrize(
    ("flat", "ref", "registry"),
    [
        ({"basis_task": "b", "registry": URL}, BasisRef("b", "task"), RegistryConfig(URL)),
        (
            {"basis_version": 2, "basis_kind": "task", "registry": URL, "token": "tok"},
            BasisRef("t", "task", version=2),
            RegistryConfig(URL, token="tok"),
        ),
        (
            {"basis_alias": "prod", "registry": URL},
            BasisRef("t", alias="prod"),
            RegistryConfig(URL),
        ),
        # A local store: a named task labels its reference, the kind comes from the method.
        ({"basis": "/b", "basis_task": "other"}, BasisRef("other", "task"), None),
        ({"basis": "/b", "basis_kind": "task"}, None, None),  # the store names its own task
    ],
)
def test_old_flat_keywords_mean_what_they_meant(flat, ref, registry):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        spec = RunSpec(task="t", method="intrinsic", **flat)
    assert (spec.basis_ref, spec.registry) == (ref, registry)
    assert basis_from_flags("t", "intrinsic", **{k: v for k, v in flat.items() if k != "basis"})[
        0
    ] == (ref)


def test_a_token_without_a_registry_is_ignored_as_before():
    # The CLI reads --token from TINYSUB_TOKEN, so a local run often carries one.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = RunSpec(task="t", method="intrinsic", basis="/b", token="tsk_env")
    assert spec.registry is None and spec.basis_ref is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"basis": "/b", "registry": RegistryConfig(URL)}, "not both"),
        ({"basis": "/b", "basis_ref": BasisRef("t", version=1)}, "no registry versions"),
        ({"basis_ref": BasisRef("t"), "basis_task": "u", "registry": URL}, "not both"),
        ({"registry": RegistryConfig(URL), "token": "x"}, "inside RegistryConfig"),
    ],
)
def test_conflicting_basis_fields_are_refused(fields, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(InvalidInput, match=message):
            RunSpec(task="t", method="intrinsic", **fields)


def test_runner_still_exports_what_it_did():
    for name in ("RunSpec", "run", "read_run", "restore", "post_run", "open_source", "RUN_FILE"):
        assert getattr(runner, name) is not None


def test_read_run_fills_basis_ref_into_old_records(tmp_path):
    old = {
        "format": "tinysub.run/1",
        "task": "sst2",
        "method": "intrinsic",
        "dim": 4,  # the name before `rank`
        "basis": {
            "kind": "task",
            "task": "sst2",
            "version": 2,
            "layers": {"layer.0": {"shape": [8, 4], "sha256": SHA}},
            "registry": URL,
            "alias": "latest",
        },
    }
    (tmp_path / "run.json").write_text(json.dumps(old))
    record = read_run(str(tmp_path))
    assert record["rank"] == 4
    assert BasisRef.from_dict(record["basis_ref"]) == BasisRef(
        "sst2", version=2, layer_sha256={"layer.0": SHA}
    )
    (tmp_path / "run.json").write_text(json.dumps({**old, "basis": {"kind": "random"}}))
    assert read_run(str(tmp_path))["basis_ref"] is None
    broken = {**old["basis"], "layers": {"layer.0": {"sha256": "not-hex"}}}
    (tmp_path / "run.json").write_text(json.dumps({**old, "basis": broken}))
    assert read_run(str(tmp_path))["basis_ref"] is None  # still readable
