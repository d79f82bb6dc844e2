"""Rebuild a finished subspace run from its folder (`restore`): base model, V, theta."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from client.refs import BasisRef
from storage.errors import InvalidInput
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.models import load_model
from worker.finetune.record import read_run
from worker.finetune.reparam import read_subspace_manifest
from worker.finetune.sources import RegistryBasisSource, StoreBasisSource, check_reference
from worker.finetune.train import seed_everything


def restore(
    path: str,
    *,
    basis: str | None = None,
    basis_dtype: str | None = None,
    device: str = "cpu",
) -> tuple[Any, Any, dict[str, Any]]:
    """Rebuild a finished subspace run from its folder: the base model, V from the basis the run
    references (checked by sha256; `basis` overrides the recorded local path), and the saved
    theta and full-space parts. Returns (SubspaceModel, tokenizer, record)."""
    # transformers takes seconds to import; like worker.finetune.models, only when used.
    from transformers import AutoTokenizer  # noqa: PLC0415 - transformers: optional, slow

    record = read_run(path)
    saved = read_subspace_manifest(os.path.join(path, "subspace"))
    # Runs saved before theta_scale existed were trained with the paper's plain V theta.
    config = SubspaceConfig.from_dict({"theta_scale": "none", **saved["config"]})
    if basis_dtype is not None:
        config = dataclasses.replace(config, basis_dtype=basis_dtype)
    ref = saved["basis"]
    data = record["data"]
    num_labels = 1 if data["problem"] == "regression" else len(data["labels"] or ())
    saved_tokenizer = os.path.join(path, "tokenizer")
    tokenizer = None
    if os.path.isdir(saved_tokenizer):
        tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer, local_files_only=True)
    # The run drew any freshly initialized weights (a head, a tiny model) right after seeding.
    seed_everything(record["seed"])
    loaded = load_model(
        record["model"], num_labels=num_labels, problem=data["problem"], tokenizer=tokenizer
    )
    source = None
    if ref["kind"] in ("task", "unified", "zeroshot", "global"):
        url = basis or ref.get("url")
        if url:
            source = StoreBasisSource.open(url, task=ref.get("task"))
        elif ref.get("registry"):
            # Pull exactly the recorded bytes again: the client refuses other sha256.
            pinned = BasisRef.from_dict(record["basis_ref"])
            source = RegistryBasisSource(ref["registry"], pinned)
        else:
            raise InvalidInput(f"run {path} records no basis path or registry; pass --basis")
        check_reference(source, ref)
        if ref.get("columns"):
            config = dataclasses.replace(config, rank=ref["columns"])
    elif config.rank is None:  # a generated basis whose k came from a basis given at train time
        first = next(iter(ref["layers"].values()))
        config = dataclasses.replace(config, rank=int(first["shape"][1]))
    model = prepare(saved["method"], loaded.model, config, source=source)
    if ref["kind"] in ("random", "fastfood"):
        check_reference_layers(model.subspace_reference, ref)
    model.load_subspace_state(os.path.join(path, "subspace"))
    return model.to(device), loaded.tokenizer, record


def check_reference_layers(have: dict, want: dict) -> None:
    """Refuse a regenerated basis (random, fastfood) whose layers hash differently."""
    bad = [
        n
        for n, w in want["layers"].items()
        if have["layers"].get(n, {}).get("sha256") != w["sha256"]
    ]
    if bad:
        raise InvalidInput(f"regenerated layers {bad} differ from the ones the run was trained in")
