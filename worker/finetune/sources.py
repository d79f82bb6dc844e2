"""Where a worker gets V per layer: a local basis store, the registry, or a seeded generator.

A `BasisSource` answers four questions: which layers, the shape of each, V of one layer as
(D, k) float32, and a JSON `reference` that names the basis without copying it (task, kind,
version, sha256 per layer). A saved subspace run stores theta plus this reference; loading it
back checks that the V in hand hashes to the same sha256.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from client.refs import BasisRef, RegistryConfig
from storage.basis import BasisStore
from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import Layout
from worker.finetune.projection import random_orthonormal_bases, tensor_sha256
from worker.svd.random_basis import GENERATOR

log = logging.getLogger(__name__)


@runtime_checkable
class BasisSource(Protocol):
    """What the re-parameterization needs from a basis, wherever it lives."""

    kind: str  # task | unified | zeroshot | global | random
    scope: str  # layer | global

    def layer_names(self) -> list[str]: ...

    def shape(self, layer: str) -> tuple[int, int]: ...

    def load(self, layer: str) -> np.ndarray: ...

    def extent(self, layer: str) -> np.ndarray | None: ...

    def reference(self) -> dict[str, Any]: ...

    def check_layout(self, layout: Layout) -> None: ...


def _check_shapes(source: BasisSource, layout: Layout) -> None:
    names = source.layer_names()
    if names != layout.group_names:
        raise LayoutMismatch(
            f"the basis has layers {names} but the model has {layout.group_names}: "
            "it was computed for another model or grouping rule"
        )
    for g in layout.groups:
        rows = source.shape(g.name)[0]
        if rows != g.size:
            raise LayoutMismatch(
                f"basis layer {g.name!r} has {rows:,} rows but the model's layer has "
                f"{g.size:,} parameters"
            )


def basis_reference(source: Any, shas: Mapping[str, str], origin: Mapping[str, Any]) -> dict:
    """The JSON a saved run keeps instead of V: which basis, and the sha256 of every layer."""
    return {
        "kind": source.kind,
        "scope": source.scope,
        "task": source.task,
        "version": source.version,
        "tasks": source.tasks or None,
        "held_out": source.held_out,
        "layers": {n: {"shape": list(source.shape(n)), "sha256": sha} for n, sha in shas.items()},
        **origin,
    }


class StoreBasisSource:
    """A finished basis read through a `BasisStore` (local path or fsspec URL).

    task, version: what the reference records; a local store knows its kind and scope from its
    manifest but not the registry's task ID or version, so the caller may name them.
    """

    def __init__(
        self,
        store: BasisStore,
        *,
        task: str | None = None,
        version: int | None = None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        m = store.manifest
        self.kind = str(m.get("kind") or "task")
        self.scope = str(m.get("scope") or ("global" if self.kind == "global" else "layer"))
        self.task = task or m.get("task") or _task_from_manifest(m)
        self.version = version if version is not None else m.get("version")
        self.origin = origin or {"url": store.url}

    @classmethod
    def open(
        cls, url: str | os.PathLike, *, task: str | None = None, storage_options=None
    ) -> StoreBasisSource:
        return cls(BasisStore.open(url, storage_options), task=task)

    def layer_names(self) -> list[str]:
        return self.store.layer_names

    def shape(self, layer: str) -> tuple[int, int]:
        info = self.store.layer(layer)
        return info.rows, info.rank

    def load(self, layer: str) -> np.ndarray:
        return self.store.load(layer)

    def extent(self, layer: str) -> np.ndarray | None:
        return _extent(self.store.layer(layer).extent, self.shape(layer)[1])

    def check_layout(self, layout: Layout) -> None:
        stored = self.store.layout
        if stored is not None:
            layout.check_compatible(stored, "basis layout")
        _check_shapes(self, layout)

    @property
    def held_out(self) -> str | None:
        return self.store.manifest.get("held_out")

    @property
    def tasks(self) -> list[str]:
        return list(self.store.manifest.get("tasks") or [])

    def reference(self) -> dict[str, Any]:
        shas = {n: i.sha256 for n, i in self.store.layers.items()}
        return basis_reference(self, shas, self.origin)


def _extent(values, rank: int) -> np.ndarray | None:
    """The trajectory's recorded extent along each direction of a layer, or None when the basis
    records none that fit (bases computed before it was recorded)."""
    if not values or len(values) != rank:
        return None
    s = np.asarray(values, dtype=np.float64)
    return s if np.all(np.isfinite(s)) and np.all(s > 0) else None


def _task_from_manifest(m: Mapping) -> str | None:
    sources = m.get("sources") or []
    if m.get("kind") in ("task", "global") and len(sources) == 1:
        label = sources[0].get("label")
        # compute_bases labels a lone store by its URL; only a real label names a task.
        if label and label != sources[0].get("url"):
            return label
    return None


class RegistryBasisSource:
    """A basis pulled by task ID from the registry through `client.Client.pull_basis`.

    The client downloads into its content-addressed cache (or reuses it: an unchanged manifest
    costs one 304), verifies every layer's sha256, and the layers are read as copy-on-write
    memory maps of the cached files. `ref` is the resolved `BasisRef` (task, kind, version and
    the sha256 of every layer pulled); the reference records it, so runs are tracked per basis
    version. A pinned ref (a run record's) is refused if the registry serves other bytes.
    """

    def __init__(
        self,
        registry_url: str,
        task_id: str | BasisRef,
        kind: str = "task",
        *,
        version: int | None = None,
        alias: str | None = None,
        token: str | None = None,
        cache_dir: str | None = None,
        client: Any = None,
        local_files_only: bool = False,
    ) -> None:
        try:  # the registry client; imported only when a registry is used
            from client import Client  # noqa: PLC0415 - client extra (tenacity) is optional
        except ImportError as exc:  # pragma: no cover - a worker installed without the client
            raise InvalidInput(
                "this install has no registry client (pip install tinysub[client]); "
                "use a local --basis"
            ) from exc

        if isinstance(task_id, BasisRef):
            request = task_id
        else:
            request = BasisRef(
                task_id, kind, version=version, alias=None if version is not None else alias
            )
        self.client = client or Client(registry_url, token=token, cache_dir=cache_dir)
        self.registry_url = registry_url
        self.alias = None if request.version is not None else (request.alias or "latest")
        self.pulled = self.client.pull_basis(request, local_files_only=local_files_only)
        self.ref = BasisRef.from_manifest(self.pulled.manifest)
        manifest = self.pulled.manifest
        self.kind = self.ref.kind
        self.scope = "global" if self.kind == "global" else "layer"
        self.task = self.ref.task
        self.version = self.ref.version
        self._layers = {info["name"]: info for info in manifest["layers"]}
        params = manifest.get("params") or {}
        self.tasks = list(params.get("tasks") or [])
        self.held_out = params.get("held_out")

    @classmethod
    def from_ref(
        cls, registry: RegistryConfig, ref: BasisRef, *, client: Any = None
    ) -> RegistryBasisSource:
        """Pull `ref` from `registry` (a run spec's two basis fields)."""
        return cls(
            registry.url, ref, token=registry.token, cache_dir=registry.cache_dir, client=client
        )

    def layer_names(self) -> list[str]:
        return list(self._layers)

    def shape(self, layer: str) -> tuple[int, int]:
        if layer not in self._layers:
            raise LayoutMismatch(f"the pulled basis has no layer {layer!r}")
        rows, rank = self._layers[layer]["shape"]
        return int(rows), int(rank)

    def load(self, layer: str) -> np.ndarray:
        self.shape(layer)
        return self.pulled.array(layer)

    def extent(self, layer: str) -> np.ndarray | None:
        return _extent(self._layers[layer].get("extent"), self.shape(layer)[1])

    def check_layout(self, layout: Layout) -> None:
        layout.check_compatible(self.client.task_layout(self.task), "basis layout")
        _check_shapes(self, layout)

    def reference(self) -> dict[str, Any]:
        # The hashes the client verified the downloaded bytes against.
        shas = dict(self.ref.layer_sha256)
        return basis_reference(self, shas, {"registry": self.registry_url, "alias": self.alias})


class RandomBasisSource:
    """A seeded random orthonormal basis with the layout's shapes (the paper's Random).

    Nothing is stored: the seed regenerates V, and the reference carries the sha256 of each
    generated layer so that a saved run proves it was trained in the same V.
    """

    kind = "random"

    def __init__(self, layout: Layout, rank: int, *, seed: int, scope: str = "layer") -> None:
        self.scope = scope
        self.seed = seed
        self.rank = rank
        self._rows = {g.name: g.size for g in layout.groups}
        self._bases: dict[str, torch.Tensor] = random_orthonormal_bases(
            self._rows, rank, seed=seed, scope=scope
        )
        self._sha = {n: tensor_sha256(v) for n, v in self._bases.items()}

    def layer_names(self) -> list[str]:
        return list(self._rows)

    def shape(self, layer: str) -> tuple[int, int]:
        return self._rows[layer], self.rank

    def load(self, layer: str) -> np.ndarray:
        return self._bases[layer].numpy()

    def extent(self, layer: str) -> np.ndarray | None:
        return None  # a generated basis has no trajectory to measure

    def check_layout(self, layout: Layout) -> None:
        _check_shapes(self, layout)

    def reference(self) -> dict[str, Any]:
        return {
            "kind": "random",
            "scope": self.scope,
            "seed": self.seed,
            "generator": GENERATOR,
            "layers": {
                n: {"shape": [self._rows[n], self.rank], "sha256": self._sha[n]} for n in self._rows
            },
        }


def check_reference(source: BasisSource, expected: Mapping[str, Any]) -> None:
    """Refuse a source whose layers do not hash to the ones a saved run recorded."""
    have = source.reference().get("layers", {})
    want = expected.get("layers", {})
    if set(have) != set(want):
        raise LayoutMismatch(f"basis layers {sorted(have)} differ from recorded {sorted(want)}")
    bad = [n for n in want if have[n].get("sha256") != want[n].get("sha256")]
    if bad:
        raise InvalidInput(
            f"basis layers {bad} do not match the sha256 the run recorded: another basis "
            "(or another version) than the one this theta was trained in"
        )
