"""Names for things in the registry: `BasisRef` (which basis) and `RegistryConfig` (which server).

A `BasisRef` travels the whole way from a request to a run record: a fine-tuning spec names a
basis by task and kind and optionally a version or an alias; `Client.pull_basis` resolves it to
the version the registry served and the sha256 of each layer it downloaded (`resolved`); the run
writes that resolved ref to run.json, so the run can be traced to, and re-pulled from, exactly
the bytes it was trained in. Nothing here imports httpx: the worker can name a basis without
loading the HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.errors import InvalidInput

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = ("task", "kind", "version", "alias", "layer_sha256")
# Stored-basis kinds whose references name a registry-style task (random and fastfood bases are
# regenerated from a seed and have no task or version to point at).
STORED_KINDS = ("task", "unified", "zeroshot", "global")


@dataclass(frozen=True)
class BasisRef:
    """Which basis: a task's basis of one kind, at a version or an alias (neither: latest).

    layer_sha256 maps each layer to the sha256 of its bytes; it is empty on a request and filled
    once the basis is resolved (the manifest the registry served, or a run's record). A ref with
    a version and hashes is pinned: pulling it again refuses any other bytes.
    """

    task: str
    kind: str = "task"
    version: int | None = None
    alias: str | None = None
    # Not hashed: a dict is unhashable, and task/kind/version already identify a basis.
    layer_sha256: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise InvalidInput(f"a basis ref needs a task ID, got {self.task!r}")
        if not isinstance(self.kind, str) or not self.kind:
            raise InvalidInput(f"a basis ref needs a kind (task, unified, ...), got {self.kind!r}")
        # bool is an int: True would silently mean version 1.
        if self.version is not None and (
            isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1
        ):
            raise InvalidInput(f"a basis version is an integer >= 1, got {self.version!r}")
        if self.alias is not None and (not isinstance(self.alias, str) or not self.alias):
            raise InvalidInput(f"a basis alias is a non-empty name, got {self.alias!r}")
        if self.version is not None and self.alias is not None:
            raise InvalidInput(
                f"give a basis version or an alias, not both (version {self.version}, "
                f"alias {self.alias!r})"
            )
        bad = [n for n, sha in self.layer_sha256.items() if not _SHA256.match(str(sha))]
        if bad:
            raise InvalidInput(f"layers {bad} of {self} have no valid sha256 (64 hex digits)")
        # A private copy: the caller's dict changing later must not change a frozen ref.
        object.__setattr__(self, "layer_sha256", dict(self.layer_sha256))

    def __str__(self) -> str:
        return f"{self.task}/{self.kind} {self.selector}"

    @property
    def selector(self) -> str:
        """How the registry is asked: `v3`, or `@name` (no version and no alias: `@latest`)."""
        return f"v{self.version}" if self.version is not None else f"@{self.alias or 'latest'}"

    @property
    def resolved(self) -> bool:
        """Whether the ref names exact bytes: a version and the sha256 of every layer."""
        return self.version is not None and bool(self.layer_sha256)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (run.json's ``basis_ref``)."""
        return {
            "task": self.task,
            "kind": self.kind,
            "version": self.version,
            "alias": self.alias,
            "layer_sha256": dict(self.layer_sha256),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BasisRef:
        """Read `to_dict`'s form back; unknown keys are refused (a typo is not silently lost)."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a basis ref is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise InvalidInput(f"unknown basis ref keys {unknown}; expected some of {_KEYS}")
        if "task" not in data:
            raise InvalidInput("a basis ref needs a task")
        return cls(
            task=data["task"],
            kind=data.get("kind") or "task",
            version=data.get("version"),
            alias=data.get("alias"),
            layer_sha256=data.get("layer_sha256") or {},
        )

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], *, alias: str | None = None) -> BasisRef:
        """The resolved ref of a basis as the registry serves it (GET .../bases/{kind}): its
        task_id, kind, version and every layer's sha256. The version pins it; `alias` is not
        kept beside it (exclusive), so the ref re-pulls these bytes even after the alias moves.
        """
        try:
            layers = manifest["layers"] or []
            ref = cls(
                task=manifest["task_id"],
                kind=manifest["kind"],
                version=int(manifest["version"]),
                layer_sha256={info["name"]: info["sha256"] for info in layers},
            )
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"not a basis manifest ({exc!r}); is the basis ready?") from exc
        if not ref.layer_sha256:
            raise InvalidInput(f"{ref} has no layers: it is not ready")
        return ref

    @classmethod
    def from_reference(cls, reference: Mapping[str, Any] | None) -> BasisRef | None:
        """The ref inside a run's basis reference (run.json's ``basis``: kind, task, version,
        layers with sha256); None for a generated basis or one with no task to name."""
        if not reference or reference.get("kind") not in STORED_KINDS or not reference.get("task"):
            return None
        version = reference.get("version")
        layers = reference.get("layers") or {}
        return cls(
            task=str(reference["task"]),
            kind=str(reference["kind"]),
            version=int(version) if version is not None else None,
            alias=None if version is not None else reference.get("alias"),
            layer_sha256={n: info["sha256"] for n, info in layers.items()},
        )

    def check_manifest(self, manifest: Mapping[str, Any]) -> BasisRef:
        """The manifest's resolved ref, after checking it is this ref's basis: same task, kind,
        version when one is named, and the same sha256 for every layer this ref records."""
        got = BasisRef.from_manifest(manifest)
        if (got.task, got.kind) != (self.task, self.kind):
            raise InvalidInput(f"asked for {self}, the registry served {got}")
        if self.version is not None and got.version != self.version:
            raise InvalidInput(f"asked for {self}, the registry served {got}")
        differ = sorted(n for n, sha in self.layer_sha256.items() if got.layer_sha256.get(n) != sha)
        if differ:
            raise InvalidInput(
                f"layers {differ} of {got} do not match the sha256 recorded in {self}: the "
                "registry holds other bytes under this version than the ones recorded"
            )
        return got


@dataclass(frozen=True)
class RegistryConfig:
    """Where the registry is and how to authenticate (token: None reads TINYSUB_TOKEN)."""

    url: str
    token: str | None = field(default=None, repr=False)  # kept out of logs and reprs
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise InvalidInput(f"a registry URL starts with http:// or https://, got {self.url!r}")
