"""How pass 1 is done: a typed choice that carries its own parameters.

`GramMethod()` is the exact route (float64 Grams, two passes over the data);
`RandomizedMethod(oversample, power_iters, seed)` is the randomized SVD of
`worker.svd.randomized` (power_iters + 3 passes) for long trajectories with k << rows.
Why types rather than a name plus loose keywords: the randomized settings only mean something
for the randomized route, so they travel with it, are validated when the choice is made (before
anything is read or written), and a Gram computation cannot be handed a seed it would ignore.
Edges that name the method as a string (CLI flags, scripts) translate with `method_from_name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from storage.errors import InvalidInput
from storage.vocabulary import SvdMethod, parse
from worker.svd.randomized import SketchParams

__all__ = [
    "GramMethod",
    "Method",
    "RandomizedMethod",
    "check_method",
    "method_from_name",
]


@dataclass(frozen=True)
class GramMethod:
    """Exact: per layer group the float64 Gram of every row any basis uses, then one small
    eigenproblem per basis. Two passes over the data (Gram, projection)."""

    name: ClassVar[SvdMethod] = SvdMethod.GRAM
    # raw mode is solved through the small factor of the shift row, so it gets the raw cut
    # (see `gram.resolve_rcond`).
    factored: ClassVar[bool] = True

    @property
    def passes(self) -> int:
        """Passes over every column block, projection included (for the bytes-read report)."""
        return 2

    def params(self) -> dict[str, Any]:
        """What the manifest records as `method_params`: nothing to choose here."""
        return {}


@dataclass(frozen=True)
class RandomizedMethod:
    """Randomized SVD (Halko, Martinsson and Tropp 2011): l = k + oversample sketch columns,
    power_iters power iterations, and the seed of the Gaussian test matrix. Checked on
    construction, so bad settings fail before any work."""

    oversample: int = 10
    power_iters: int = 2
    seed: int = 0

    name: ClassVar[SvdMethod] = SvdMethod.RANDOMIZED
    # the randomized route never forms the raw factor: its accuracy is the Gram route's.
    factored: ClassVar[bool] = False

    def __post_init__(self) -> None:
        SketchParams(self.oversample, self.power_iters, self.seed)  # raises on bad settings

    @property
    def sketch(self) -> SketchParams:
        """The settings in the form `worker.svd.randomized` takes them."""
        return SketchParams(self.oversample, self.power_iters, self.seed)

    @property
    def passes(self) -> int:
        """Sketch, power_iters power steps, Rayleigh-Ritz, projection."""
        return self.power_iters + 3

    def params(self) -> dict[str, Any]:
        """What the manifest records as `method_params`."""
        return self.sketch.to_dict()


Method: TypeAlias = GramMethod | RandomizedMethod
_CLASSES: dict[SvdMethod, type[GramMethod] | type[RandomizedMethod]] = {
    GramMethod.name: GramMethod,
    RandomizedMethod.name: RandomizedMethod,
}


def method_from_name(name: SvdMethod | str, **params: Any) -> Method:
    """The method an edge names (a CLI flag, a script's keyword), with its parameters; unknown
    names and parameters the method does not take raise InvalidInput."""
    name = parse(SvdMethod, name, "method")
    cls = _CLASSES[name]
    try:
        return cls(**params)
    except TypeError:
        raise InvalidInput(
            f"method {name.value!r} does not take the parameters {sorted(params)}"
        ) from None


def check_method(method: object) -> Method:
    """Refuse anything but a typed method (a bare name would silently lose its parameters)."""
    if not isinstance(method, GramMethod | RandomizedMethod):
        raise InvalidInput(
            f"method must be GramMethod() or RandomizedMethod(...), got {method!r} "
            "(translate a name with worker.svd.method.method_from_name)"
        )
    return method
