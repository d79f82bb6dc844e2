"""Export a trained `SubspaceModel` as a PEFT adapter of the `tinysub` method.

`export_peft(model, DIR)` (and `tinysub export RUN --peft DIR`) writes theta, the SAID scales,
the trained head as PEFT `modules_to_save`, and the basis reference; the V the run already
holds is handed to the tuner, so exporting fetches nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping

import torch
from peft.peft_model import PeftModel
from torch import nn

from storage.errors import InvalidInput
from storage.layout import Layout
from worker.finetune.peft_adapter import GIVEN_PROJECTIONS, SubspaceLayer, TinysubConfig
from worker.finetune.reparam import SubspaceModel, _key


def layer_modules(model: nn.Module, layout: Layout) -> dict[str, str]:
    """Layout group -> the name of the module holding exactly its parameters."""
    modules = dict(model.named_modules())
    out = {}
    for g in layout.groups:
        name = g.prefix.rstrip(".")
        module = modules.get(name)
        owned = None if module is None else {n for n, _ in module.named_parameters()}
        if owned is None or owned != {p.name for p in g.params}:
            raise InvalidInput(
                f"layer group {g.name!r} is not one module of the model (a regex grouping?): a "
                "PEFT adapter re-parameterizes whole modules"
            )
        out[g.name] = name
    return out


def _modules_to_save(model: SubspaceModel, layers: Mapping[str, str]) -> list[str]:
    """The modules whose full-space parameters trained beside theta (head, pooler, embeddings)."""
    owners = sorted({n.rsplit(".", 1)[0] for n in model.trainable_base})
    inside = [o for o in owners if any(o == m or o.startswith(m + ".") for m in layers.values())]
    if inside:
        raise InvalidInput(
            f"parameters inside re-parameterized layers trained in full space ({inside}); a "
            "PEFT adapter cannot hold them beside theta"
        )
    return owners


def peft_config_for(
    model: SubspaceModel,
    *,
    registry: str | None = None,
    base_model_name_or_path: str | None = None,
) -> TinysubConfig:
    """The `TinysubConfig` of a trained run: its method, settings and basis reference."""
    if model.subspace_config.scope == "global":
        raise InvalidInput(
            "a global theta is shared by every layer; PEFT adapters are per module: export "
            "the merged model instead (merge_and_unload of a layer-scope run, or tinysub's merge)"
        )
    layers = layer_modules(model.base, model.layout)
    reference = dict(model.subspace_reference)
    if registry:
        reference["registry"] = registry
    return TinysubConfig(
        method=model.subspace_method,
        subspace=model.subspace_config.to_dict(),
        basis=reference,
        layers=layers,
        layout_hash=model.layout.hash,
        registry=registry or reference.get("registry"),
        modules_to_save=_modules_to_save(model, layers) or None,
        base_model_name_or_path=base_model_name_or_path,
    )


@contextlib.contextmanager
def _given(model: SubspaceModel) -> Iterator[None]:
    projections = {g: model.subspace_projections[_key(g)] for g in model.layout.group_names}
    theta = {g: model.subspace_theta[_key(g)].detach() for g in model.layout.group_names}
    token = GIVEN_PROJECTIONS.set((projections, theta))
    try:
        yield
    finally:
        GIVEN_PROJECTIONS.reset(token)


def to_peft(
    model: SubspaceModel,
    *,
    registry: str | None = None,
    base_model_name_or_path: str | None = None,
) -> PeftModel:
    """A `PeftModel` over a copy of the run's base model holding the run's theta, SAID scales
    and trained parts: `save_pretrained` writes the adapter folder."""
    config = peft_config_for(
        model, registry=registry, base_model_name_or_path=base_model_name_or_path
    )
    base = copy.deepcopy(model.base)  # holds theta0 in the layers and the trained head
    with _given(model):
        peft_model = PeftModel(base, config)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not isinstance(module, SubspaceLayer):
                continue
            group = next(g for g, m in config.layers.items() if name.endswith(m))
            module.tinysub_theta["default"].copy_(model.subspace_theta[_key(group)])
            if "default" in module.tinysub_said:
                module.tinysub_said["default"].copy_(model.subspace_said[_key(group)])
    return peft_model


def export_peft(
    model: SubspaceModel,
    path: str | os.PathLike[str],
    *,
    registry: str | None = None,
    base_model_name_or_path: str | None = None,
) -> str:
    """Save a trained run as a PEFT adapter folder; returns the folder."""
    peft_model = to_peft(model, registry=registry, base_model_name_or_path=base_model_name_or_path)
    # Trained embeddings are modules_to_save already; peft's "auto" would look the base model
    # up on the Hub to decide, and nothing here may reach the network.
    peft_model.save_pretrained(os.fspath(path), save_embedding_layers=False)
    return os.fspath(path)
