"""Subspace runs as PEFT adapters: a registered PEFT method, `tinysub`, and the export to it.

A trained `SubspaceModel` saves as an ordinary PEFT folder (adapter_config.json +
adapter_model.safetensors) with `worker.finetune.peft_export.export_peft`; any user loads
it back with `PeftModel.from_pretrained(base, folder)` once this module is imported (it
registers the method with peft's own `register_peft_method`), and `merge_and_unload()` gives
the same plain weights as tinysub's `SubspaceModel.merge()`, bit for bit.

What the folder holds, like VeRA's projection-by-seed: theta (h x k per layer), the SAID scales,
the trained full-space parts as PEFT `modules_to_save` (head, pooler, embeddings), and a
*reference* to V, never V itself: the basis' kind, task, version, registry URL or local path,
and the sha256 of every layer. Loading fetches V again through the registry client's verified
cache (offline from the cache when no registry answers), or from a local basis store, or
regenerates it from its seed (random and fastfood bases), and refuses bytes whose sha256
differs from the recorded ones.

Every encoder/decoder layer of the layout is one PEFT target module, wrapped by
`SubspaceLayer`, whose forward runs the layer with theta0 + views of V theta in place of its
parameters (`torch.func.functional_call`: the base layer is never copied). Supported: layer
scope (one theta per layer; a global theta is shared across layers, which PEFT's per-module
adapters cannot express) with intrinsic, transfer, unified, zeroshot, random, fastfood and said.

peft has no public way to add a PEFT type from outside its source tree: `register_peft_method`
expects a member of its `PeftType` enum. `_peft_type()` adds one member, `TINYSUB`, the way
enum members are stored (name and value maps, member list); it is checked at import and by the
tests against the installed peft.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from torch import nn
from torch.func import functional_call

from client.refs import BasisRef
from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import Group, layout_from_model
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.models import hub_offline
from worker.finetune.reparam import SubspaceModel, _key
from worker.finetune.restore import check_reference_layers
from worker.finetune.sources import RegistryBasisSource, StoreBasisSource, check_reference

PEFT_METHOD = "tinysub"
PREFIX = "tinysub_"
STORED_KINDS = ("task", "unified", "zeroshot", "global")
GENERATED_KINDS = ("random", "fastfood")


def _peft_type() -> PeftType:
    """PeftType.TINYSUB, added to peft's enum once (see the module docstring for why)."""
    name = PEFT_METHOD.upper()
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    setattr(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    if PeftType(name) is not member or PeftType[name] is not member:  # pragma: no cover
        raise RuntimeError("this peft's PeftType enum cannot take the tinysub method")
    return member


@dataclass
class TinysubConfig(PeftConfig):
    """The adapter's settings: how theta maps into each layer, and which V it needs.

    method: the subspace method the run trained with. subspace: its `SubspaceConfig` as a dict.
    basis: the run's basis reference (kind, task, version, url, registry, seed, layers with
    shape and sha256). layers: layout group -> the model module it re-parameterizes.
    layout_hash: the layout the theta belongs to. registry / basis_path: where to fetch V
    when loading (default: the registry or local path the basis reference records).
    local_files_only: take V from the client's verified cache only (also under HF_HUB_OFFLINE).
    """

    method: str = "intrinsic"
    subspace: dict[str, Any] = field(default_factory=dict)
    basis: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)
    layout_hash: str | None = None
    registry: str | None = None
    basis_path: str | None = None
    local_files_only: bool = False
    target_modules: list[str] | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = _peft_type()
        if self.target_modules is None:
            self.target_modules = list(self.layers.values())


class SubspaceLayer(nn.Module, BaseTunerLayer):
    """One layer whose parameters are theta0 + the views of V (1/h) sum_i theta^(i).

    The basis (`tinysub_projection`) is a module with non-persistent buffers: it moves with
    the model but never enters a saved adapter; theta and the SAID scale are the adapter.
    """

    adapter_layer_names = ("tinysub_theta", "tinysub_said")
    other_param_names = ("tinysub_projection",)

    def __init__(self, base_layer: nn.Module, group: Group) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.param_names = [p.name for p in group.params]
        self.param_shapes = [tuple(p.shape) for p in group.params]
        self.param_numels = [p.numel for p in group.params]
        self.tinysub_theta = nn.ParameterDict()
        self.tinysub_said = nn.ParameterDict()
        self.tinysub_projection = nn.ModuleDict()
        self.merged_adapters: list[str] = []

    def update_layer(
        self, adapter_name: str, projection: nn.Module, theta: torch.Tensor, said: bool
    ) -> None:
        self.tinysub_projection[adapter_name] = projection
        self.tinysub_theta[adapter_name] = nn.Parameter(theta.clone())
        if said:
            self.tinysub_said[adapter_name] = nn.Parameter(torch.ones(()))
        self.set_adapter(self.active_adapters)

    def update(self, adapter_name: str) -> torch.Tensor:
        """V theta (D,) for one adapter, with the same operations as `SubspaceModel.updates`,
        so a merge gives identical bytes."""
        theta = self.tinysub_theta[adapter_name].mean(dim=0)
        u = self.tinysub_projection[adapter_name](theta)
        if adapter_name in self.tinysub_said:
            u = u * self.tinysub_said[adapter_name]
        return u

    def _deltas(self, adapter_name: str) -> Iterator[tuple[str, torch.Tensor]]:
        pieces = torch.split(self.update(adapter_name), self.param_numels)
        for name, shape, piece in zip(self.param_names, self.param_shapes, pieces, strict=True):
            yield name, piece.view(shape)

    def _active(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.tinysub_theta]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        active = self._active()
        if self.disable_adapters or self.merged or not active:
            return self.base_layer(*args, **kwargs)
        params: dict[str, torch.Tensor] = {}
        for adapter in active:
            for name, delta in self._deltas(adapter):
                current = params.get(name, self.base_layer.get_parameter(name))
                params[name] = current + delta
        return functional_call(self.base_layer, params, args, kwargs)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for adapter in adapter_names or self._active():
            if adapter in self.merged_adapters:
                continue
            for name, delta in self._deltas(adapter):
                param = self.base_layer.get_parameter(name)
                merged = param + delta
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"merging adapter {adapter!r} gives NaN or Inf in {name}")
                param.copy_(merged)
            self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            for name, delta in self._deltas(adapter):
                self.base_layer.get_parameter(name).sub_(delta)


# Projections handed over by `peft_export`, so exporting a run does not fetch V again.
GIVEN_PROJECTIONS: ContextVar[tuple[dict[str, nn.Module], dict[str, Any]] | None] = ContextVar(
    "tinysub_peft_projections", default=None
)


class TinysubModel(BaseTuner):
    """The PEFT tuner of the `tinysub` method: wraps each layer of the layout in a
    `SubspaceLayer` that holds this adapter's theta and its (unsaved) V."""

    prefix = PREFIX
    tuner_layer_cls = SubspaceLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config  # target_modules come from the layout, set when the config is made

    def _pre_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        if not isinstance(config, TinysubConfig):
            raise InvalidInput(f"the tinysub PEFT method needs a TinysubConfig, got {config!r}")
        self._layout = layout_from_model(model, SubspaceConfig.from_dict(config.subspace).rule)
        if config.layout_hash and config.layout_hash != self._layout.hash:
            raise LayoutMismatch(
                f"the adapter was trained on layout {config.layout_hash[:12]}; this model has "
                f"{self._layout.hash[:12]}"
            )
        given = GIVEN_PROJECTIONS.get()
        projections, initial = given if given is not None else _load_projections(model, config)
        self._pending = {"projections": projections, "theta": initial}

    @staticmethod
    def _check_target_module_exists(peft_config: PeftConfig, key: str) -> bool:
        return key in getattr(peft_config, "layers", {}).values()

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        group_name = next(g for g, m in peft_config.layers.items() if m == current_key)
        group = self._layout.group(group_name)
        projection = self._pending["projections"][group_name]
        theta = self._pending["theta"][group_name]
        said = bool(SubspaceConfig.from_dict(peft_config.subspace).said)
        if isinstance(target, SubspaceLayer):
            target.update_layer(adapter_name, projection, theta, said)
            return
        layer = SubspaceLayer(target, group)
        layer.update_layer(adapter_name, projection, theta, said)
        self._replace_module(parent, target_name, layer, target)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # peft's version copies `weight`/`bias` onto a module that is not a tuner layer (an
        # unloaded one): a whole transformer layer has neither, and needs nothing copied.
        setattr(parent, child_name, new_module)
        if isinstance(new_module, SubspaceLayer):
            device = next(new_module.base_layer.parameters()).device
            new_module.tinysub_theta.to(device)
            new_module.tinysub_said.to(device)
            new_module.tinysub_projection.to(device)


def _load_projections(
    model: nn.Module, config: TinysubConfig
) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """V per layer (and theta's initial value) for an adapter being loaded or created, from
    the basis its config references, refusing one whose sha256 differs from the recorded."""
    subspace = SubspaceConfig.from_dict(config.subspace)
    ref = config.basis
    kind = ref.get("kind")
    source = None
    if kind in STORED_KINDS:
        source = _stored_source(config)
    elif kind not in GENERATED_KINDS:
        raise InvalidInput(f"the adapter's basis has unknown kind {kind!r}")
    sub = prepare(config.method, model, subspace, source=source)
    if not isinstance(sub, SubspaceModel):
        raise InvalidInput(f"method {config.method!r} trains no subspace; nothing to adapt")
    if kind in GENERATED_KINDS and ref.get("layers"):
        check_reference_layers(sub.subspace_reference, ref)
    # `prepare` set requires_grad on the base model; PEFT sets it again for the adapter.
    projections = {g: sub.subspace_projections[_key(g)] for g in sub.layout.group_names}
    theta = {g: sub.subspace_theta[_key(g)].detach() for g in sub.layout.group_names}
    return projections, theta


def _stored_source(config: TinysubConfig) -> Any:
    """The stored basis: a local store (checked against the recorded sha256) or the registry
    (the client verifies every byte and refuses a pinned ref whose bytes differ)."""
    ref = config.basis
    path = config.basis_path or (None if config.registry else ref.get("url"))
    if path and os.path.exists(path):
        source = StoreBasisSource.open(path, task=ref.get("task"))
        check_reference(source, ref)
        return source
    registry = config.registry or ref.get("registry")
    if not registry:
        raise InvalidInput(
            "the adapter's basis is neither a local store here nor in a registry: pass "
            "basis_path= (a local copy of the basis) or registry= when loading"
        )
    pinned = BasisRef(
        ref["task"],
        ref["kind"],
        version=ref.get("version"),
        layer_sha256={n: info["sha256"] for n, info in ref.get("layers", {}).items()},
    )
    # The token and cache come from TINYSUB_TOKEN / TINYSUB_CACHE, as for every client; an
    # unreachable registry falls back to the verified cache, and offline (local_files_only, or
    # HF_HUB_OFFLINE as for the rest of a PEFT load) only the cache is asked.
    offline = config.local_files_only or hub_offline()
    return RegistryBasisSource(registry, pinned, local_files_only=offline)


def _register() -> None:
    peft_type = _peft_type()
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING and peft_type in PEFT_TYPE_TO_TUNER_MAPPING:
        return  # imported twice (e.g. by a second module name): already registered
    register_peft_method(
        name=PEFT_METHOD, config_cls=TinysubConfig, model_cls=TinysubModel, prefix=PREFIX
    )


_register()
