"""The parameters of an ordered basis: what `bases.params` (JSON) holds and the job reads.

`services.bases.validate_order` builds them from a checked order; `services.compute` and
`services.recompute` read them. On disk they are the JSON of every earlier release: the fields
an order set, in this order (rank, mode, scope, executor, uid, then seed for a random basis or
selection, tasks and held_out for the others), and nothing else (`to_json` drops the fields an
order never set, so a task basis has no `seed` key and a random one has `"mode": null`). Keys
this model does not know are kept, so a row written by another release reads and writes back
unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage.errors import InvalidInput
from storage.vocabulary import BasisMode, BasisScope

# all | last | last:K | first:K | every:K, or explicit row indices (see worker.svd.sources).
Selection = str | list[Annotated[int, Field(ge=0)]]


class BasisParams(BaseModel):
    """One basis version's parameters. `mode` and `scope` are None for a random basis, which
    has a `seed` instead of `selection` and `tasks`; `held_out` is a zeroshot basis' own task."""

    model_config = ConfigDict(extra="allow", frozen=True)

    rank: int
    mode: BasisMode | None = None
    scope: BasisScope | None = None
    executor: str | None = None  # None: "local" (rows written before executors were chosen)
    uid: str | None = Field(
        None, description="The registry's identity of the version, written into its manifest."
    )
    seed: int | None = None
    selection: Selection | None = None
    tasks: list[str] | None = Field(None, description="The tasks whose trajectories it reads.")
    held_out: str | None = None

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> BasisParams:
        """The parameters a `bases.params` column holds; InvalidInput if they cannot be read."""
        try:
            return cls.model_validate(stored)
        except ValidationError as exc:
            raise InvalidInput(f"the basis parameters {stored!r} cannot be read: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON the `bases.params` column stores: the fields that were set, in order."""
        return self.model_dump(mode="json", exclude_unset=True)

    def with_changes(self, **changes: Any) -> BasisParams:
        """A copy with `changes` set (and so written by `to_json`)."""
        return self.model_copy(update=changes)

    @property
    def source_tasks(self) -> list[str]:
        """The tasks whose trajectories the basis reads (none for a random basis)."""
        return list(self.tasks or [])
