"""The subspace re-parameterization of a Hugging Face model (Zhang et al. 2023, Eq. 4).

The layers are an encoder's (BERT's ``encoder.layer.N``) or a decoder's (GPT-2's ``h.N``,
Llama's ``layers.N``). For every layer l, with all of its parameters flattened in the layout's
order,

    theta_l = theta0_l + V_l (1/h) sum_i theta_t_l^(i)          V_l: (D_l, k), theta_t_l: (h, k)

`SubspaceModel` keeps the frozen base model and adds only the h x k vectors (`subspace_theta`)
and, for SAID, one scale per layer (`subspace_said`). Each forward computes one product
V_l theta per layer, splits it into views shaped like the layer's parameters and runs the base
model through `torch.func.functional_call` with theta0 + view in place of each encoder
parameter: the base module is never copied or modified.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from storage.errors import InvalidInput, LayoutMismatch, NotFound
from storage.layout import Layout
from worker.finetune.config import SubspaceConfig

SUBSPACE_FORMAT = "tinysub.subspace/1"
THETA_FILE = "subspace.safetensors"
TRAINED_FILE = "trained.safetensors"
MANIFEST_FILE = "subspace.json"
GLOBAL_KEY = "encoder"


def _key(group: str) -> str:
    # Module and parameter dicts refuse dots in keys: layer.3 -> layer_3.
    return group.replace(".", "_")


# The last name component of a normalization module whose class name does not say "Norm".
_NORM_NAME = re.compile(r"^(?:ln(?:_\w+)?|\w*norm)$", re.IGNORECASE)


def _is_norm(module_name: str, module: nn.Module) -> bool:
    """LayerNorm (BERT's `LayerNorm`, GPT-2's `ln_1`/`ln_2`/`ln_f`) or RMSNorm (Llama's
    `input_layernorm`/`post_attention_layernorm`/`norm`, Qwen3's `q_norm`)."""
    return "Norm" in type(module).__name__ or bool(_NORM_NAME.match(module_name.split(".")[-1]))


def _owners(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Parameter name -> (name, module) of the module that holds it (tied weights: every name)."""
    out = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, _ in module.named_parameters(recurse=False, remove_duplicate=False):
            out[f"{mname}.{pname}" if mname else pname] = (mname, module)
    return out


def parameter_parts(model: nn.Module, layout: Layout) -> dict[str, str]:
    """Name -> part for every parameter: encoder | layernorm | embeddings | encoder_other | head.

    `encoder` and `layernorm` are the parameters inside layout groups (the re-parameterized
    ones; `layernorm` are the normalization weights in them: LayerNorm or RMSNorm).
    `embeddings` are BERT's `*.embeddings.*` and a decoder's token and position embeddings
    (GPT-2's `wte`/`wpe`, Llama's `embed_tokens`; a tied `lm_head` is the same tensor).
    `encoder_other` are the body's parameters outside every layer: MPNet's
    `relative_attention_bias`, a decoder's final norm (GPT-2's `ln_f`, Llama's `norm`).
    `head` is everything else (pooler and classifier, an untied `lm_head`).
    """
    in_layers = {n for g in layout.groups for n in g.full_names()}
    owners = _owners(model)
    body = getattr(model, "base_model_prefix", "") or ""
    parts = {}
    for name, _ in model.named_parameters():
        mname, module = owners.get(name, ("", model))
        if name in in_layers:
            norm = "LayerNorm" in name or "layer_norm" in name or _is_norm(mname, module)
            parts[name] = "layernorm" if norm else "encoder"
        elif ".embeddings." in f".{name}":
            parts[name] = "embeddings"
        elif ".encoder." in f".{name}":
            parts[name] = "encoder_other"
        elif isinstance(module, nn.Embedding):
            parts[name] = "embeddings"
        elif body and name.startswith(f"{body}.") and _is_norm(mname, module):
            parts[name] = "encoder_other"
        else:
            parts[name] = "head"
    return parts


def set_trainable(model: nn.Module, layout: Layout, parts: Iterable[str]) -> list[str]:
    """Let exactly the parameters of `parts` train (requires_grad); return their names."""
    parts = set(parts)
    names = []
    for name, part in parameter_parts(model, layout).items():
        on = part in parts
        model.get_parameter(name).requires_grad_(on)
        if on:
            names.append(name)
    return names


class SubspaceModel(nn.Module):
    """A frozen base model whose encoder layers live in theta0 + V theta.

    Parameters
    ----------
    base:
        The Hugging Face model (e.g. a ...ForSequenceClassification); its encoder parameters are
        frozen, the parts in ``config.train_parts`` stay trainable.
    layout:
        ``storage.layout.layout_from_model(base)``: groups, parameter order and offsets.
    projections:
        Layer group name -> module mapping theta (k,) to V theta (D_l,)
        (`DenseProjection` or `FastfoodProjection`).
    config:
        The `SubspaceConfig`.
    reference:
        JSON naming the basis (kind, task, version, sha256 per layer); saved with theta.
    method:
        The method name, recorded in the saved artefact.
    """

    def __init__(
        self,
        base: nn.Module,
        layout: Layout,
        projections: Mapping[str, nn.Module],
        config: SubspaceConfig,
        reference: dict[str, Any],
        method: str = "intrinsic",
    ) -> None:
        super().__init__()
        missing = [g for g in layout.group_names if g not in projections]
        if missing or len(projections) != len(layout.groups):
            raise LayoutMismatch(
                f"projections cover {sorted(projections)} but the layout has {layout.group_names}"
            )
        for g in layout.groups:
            rows = projections[g.name].out_features
            if rows != g.size:
                raise LayoutMismatch(
                    f"the projection of {g.name!r} yields {rows:,} values; the layer has {g.size:,}"
                )
        for g in layout.groups:
            ends = [p.offset + p.numel for p in g.params]
            if [p.offset for p in g.params] != [0, *ends[:-1]]:
                raise LayoutMismatch(f"parameters of {g.name!r} do not tile its vector in order")
        dims = {projections[g].in_features for g in layout.group_names}
        if config.scope == "global" and len(dims) != 1:
            raise InvalidInput(f"a global theta needs one dimension for all layers, got {dims}")
        self.base = base
        self.subspace_layout = layout
        self.subspace_config = config
        self.subspace_reference = dict(reference)
        self.subspace_method = method
        self.subspace_projections = nn.ModuleDict({_key(g): projections[g] for g in projections})
        h = config.ensemble
        if config.scope == "global":
            shapes = {GLOBAL_KEY: (h, dims.pop())}
        else:
            shapes = {_key(g): (h, projections[g].in_features) for g in layout.group_names}
        self.subspace_theta = nn.ParameterDict(
            {
                key: nn.Parameter(self._init_theta(shape, i))
                for i, (key, shape) in enumerate(shapes.items())
            }
        )
        self.subspace_said = nn.ParameterDict(
            {_key(g): nn.Parameter(torch.ones(())) for g in layout.group_names}
            if config.said
            else {}
        )
        self.trainable_base = set_trainable(base, layout, config.train_parts)

    def _init_theta(self, shape: tuple[int, int], index: int) -> torch.Tensor:
        if self.subspace_config.init == "zeros":
            return torch.zeros(shape)
        state = np.random.SeedSequence([self.subspace_config.basis_seed, index, 1])
        seed = int(state.generate_state(1, dtype=np.uint64)[0]) >> 1
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=gen) * self.subspace_config.init_std

    # ------------------------------------------------------------------------- the update
    @property
    def layout(self) -> Layout:
        return self.subspace_layout

    def theta(self, group: str) -> torch.Tensor:
        """The ensemble mean (1/h) sum_i theta_t^(i) that layer `group` uses, (k,)."""
        key = GLOBAL_KEY if self.subspace_config.scope == "global" else _key(group)
        return self.subspace_theta[key].mean(dim=0)

    def updates(self) -> dict[str, torch.Tensor]:
        """V_l theta per layer, (D_l,) each: the update in the full parameter space."""
        is_global = self.subspace_config.scope == "global"
        shared = self.theta(self.layout.group_names[0]) if is_global else None
        out = {}
        for g in self.layout.group_names:
            theta = shared if shared is not None else self.theta(g)
            u = self.subspace_projections[_key(g)](theta)  # one product per layer
            if self.subspace_said:
                u = u * self.subspace_said[_key(g)]
            out[g] = u
        return out

    def effective_parameters(self) -> dict[str, torch.Tensor]:
        """Full name -> theta0 + (view of V theta) for every re-parameterized parameter."""
        params = {}
        updates = self.updates()
        for group in self.layout.groups:
            # The layout's parameters tile the layer vector in order, so one split gives every
            # view; its backward is one concatenation (slicing would allocate a zero-padded
            # (D,) gradient per parameter).
            pieces = torch.split(updates[group.name], [spec.numel for spec in group.params])
            for spec, full, piece in zip(group.params, group.full_names(), pieces, strict=True):
                params[full] = self.base.get_parameter(full) + piece.view(spec.shape)
        return params

    def forward(self, *args, **kwargs):
        return functional_call(self.base, self.effective_parameters(), args, kwargs)

    def activation_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        """Refused: checkpointing recomputes a layer in backward, outside the forward's
        functional_call that put theta0 + V theta in its weights (torch then finds other
        tensors than it saved). Full and freeze runs, plain models, take it."""
        raise InvalidInput(
            "gradient checkpointing does not work in a subspace model: the recomputed layers "
            "would not see theta0 + V theta; train without it (full and freeze runs take it)"
        )

    gradient_checkpointing_enable = activation_checkpointing_enable

    # ------------------------------------------------------------------------ outputs
    @torch.no_grad()
    def effective_state_dict(self) -> dict[str, torch.Tensor]:
        """The base state dict with theta0 + V theta written into the encoder parameters."""
        state = {k: v.detach() for k, v in self.base.state_dict().items()}
        for full, value in self.effective_parameters().items():
            state[full] = value.detach()
        return state

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """A plain copy of the base model with theta0 + V theta written into its weights.

        The result has no subspace parts: `save_pretrained` and any inference code take it.
        """
        merged = copy.deepcopy(self.base)
        for full, value in self.effective_parameters().items():
            merged.get_parameter(full).copy_(value)
        merged.requires_grad_(True)
        return merged

    def save_subspace(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """Write theta (safetensors), the full-space parts that trained, and the reference to V.

        Files: subspace.safetensors (theta per layer, SAID scales), trained.safetensors
        (embeddings/head as trained: needed to rebuild the run, not part of the subspace) and
        subspace.json (method, settings, layout hash, the basis reference). V is not copied.
        """
        os.makedirs(path, exist_ok=True)
        tensors = {
            f"theta.{k}": v.detach().cpu().contiguous() for k, v in self.subspace_theta.items()
        }
        tensors.update(
            {f"said.{k}": v.detach().cpu().reshape(1) for k, v in self.subspace_said.items()}
        )
        save_file(tensors, os.path.join(path, THETA_FILE))
        trained = {
            n: self.base.get_parameter(n).detach().cpu().contiguous() for n in self.trainable_base
        }
        save_file(trained, os.path.join(path, TRAINED_FILE))
        manifest = {
            "format": SUBSPACE_FORMAT,
            "method": self.subspace_method,
            "config": self.subspace_config.to_dict(),
            "layout_hash": self.layout.hash,
            "basis": self.subspace_reference,
            "theta_shapes": {k: list(v.shape) for k, v in self.subspace_theta.items()},
            "trained_parameters": sorted(trained),
            **(meta or {}),
        }
        tmp = os.path.join(path, MANIFEST_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2)
        os.replace(tmp, os.path.join(path, MANIFEST_FILE))

    @torch.no_grad()
    def load_subspace_state(self, path: str | os.PathLike) -> None:
        """Load theta (and the trained full-space parts) written by `save_subspace`."""
        manifest = read_subspace_manifest(path)
        if manifest["layout_hash"] != self.layout.hash:
            raise LayoutMismatch(
                f"the saved run has layout {manifest['layout_hash'][:12]}, the model "
                f"{self.layout.hash[:12]}"
            )
        tensors = load_file(os.path.join(path, THETA_FILE))
        for k, p in self.subspace_theta.items():
            t = tensors.get(f"theta.{k}")
            if t is None or t.shape != p.shape:
                raise LayoutMismatch(f"saved theta {k!r} is missing or has another shape")
            p.copy_(t)
        for k, p in self.subspace_said.items():
            p.copy_(tensors[f"said.{k}"].reshape(()))
        for n, t in load_file(os.path.join(path, TRAINED_FILE)).items():
            self.base.get_parameter(n).copy_(t)


def read_subspace_manifest(path: str | os.PathLike) -> dict[str, Any]:
    file = os.path.join(path, MANIFEST_FILE)
    if not os.path.exists(file):
        raise NotFound(f"no saved subspace run at {path} (no {MANIFEST_FILE})")
    with open(file) as f:
        manifest = json.load(f)
    if manifest.get("format") != SUBSPACE_FORMAT:
        raise InvalidInput(f"{file} holds format {manifest.get('format')!r}")
    return manifest
