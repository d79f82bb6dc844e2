"""`RunSpec`: what one fine-tuning run is (task, method, model, basis, data, extras), checked
on construction, and `open_source`: the basis it names.

The basis is named by three typed fields rather than seven flat ones: ``basis`` (a local basis
store), ``basis_ref`` (a `client.refs.BasisRef`: which registry basis, or the task and kind a
local one is recorded under) and ``registry`` (a `client.refs.RegistryConfig`: URL and token).
The old flat keywords (basis_task, basis_kind, basis_version, basis_alias, token, and
registry=URL) are still accepted and folded into those, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings
from dataclasses import InitVar, dataclass, field

from client.refs import BasisRef, RegistryConfig
from storage.errors import InvalidInput
from worker.finetune.config import SubspaceConfig
from worker.finetune.data import CAUSAL_LM
from worker.finetune.methods import BASIS_KIND, METHODS
from worker.finetune.outlier_controls import CONTROL_MODES
from worker.finetune.sources import BasisSource, RegistryBasisSource, StoreBasisSource
from worker.finetune.train import TrainConfig

# --task-type -> load_task's problem (None: classification or regression from the labels).
TASK_TYPES = {
    None: None,
    "auto": None,
    "classification": "classification",
    "regression": "regression",
    "causal-lm": CAUSAL_LM,
    CAUSAL_LM: CAUSAL_LM,
}


@dataclass
class RunSpec:
    task: str
    method: str
    model: str = "minilm"
    out: str | None = None
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where V comes from: a local basis store (path or fsspec URL), or the registry.
    basis: str | None = None
    # Which basis. With a registry: the one pulled (filled in when not given: this task's
    # basis of the method's kind, latest). With a local basis: the task its reference records
    # (a transfer run's basis belongs to another task) and the kind it must be.
    basis_ref: BasisRef | None = None
    registry: RegistryConfig | None = None
    # Data.
    split_seed: int = 0
    dev_fraction: float = 0.1
    train_size: int | None = None
    dev_size: int | None = None
    # A tuning split carved beside dev (see worker.finetune.data); eval_split="tune" scores the
    # run there instead of on dev, for choosing hyper-parameters without touching dev.
    tune_fraction: float = 0.0
    tune_size: int | None = None
    eval_split: str = "dev"
    # Extras.
    record_trajectory: str | None = None
    record_every: int = 10
    hold_zero_from: str | None = None
    hold_zero_mode: str = "outlier"
    sigma: float = 3.0
    save_model: bool = False
    # What the task is: None/auto (classification or regression from the labels),
    # classification, regression or causal-lm; the columns a causal-LM file's texts come from.
    task_type: str | None = None
    text_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    label_column: str | None = None  # a labeled task's label column (default: label)
    # The old flat basis fields: accepted by the constructor only, folded into basis_ref and
    # registry (reading them back gives None).
    basis_task: InitVar[str | None] = None
    basis_kind: InitVar[str | None] = None
    basis_version: InitVar[int | None] = None
    basis_alias: InitVar[str | None] = None
    token: InitVar[str | None] = None

    def __post_init__(
        self,
        basis_task: str | None,
        basis_kind: str | None,
        basis_version: int | None,
        basis_alias: str | None,
        token: str | None,
    ) -> None:
        if self.task_type not in TASK_TYPES:
            raise InvalidInput(
                f"task type {self.task_type!r} is not one of {[t for t in TASK_TYPES if t]}"
            )
        if self.method not in METHODS:
            raise InvalidInput(f"unknown method {self.method!r}; use one of {list(METHODS)}")
        self._fold_old_basis_fields(basis_task, basis_kind, basis_version, basis_alias, token)
        if self.basis and self.registry:
            raise InvalidInput("give either a local basis or a registry, not both")
        if self.registry is not None and self.basis_ref is None:
            # Full and freeze runs use it too: the registry task their run is filed under.
            self.basis_ref = BasisRef(self.task, BASIS_KIND.get(self.method, "task"))
        if self.basis and self.basis_ref and (self.basis_ref.version or self.basis_ref.alias):
            raise InvalidInput(
                f"a local basis ({self.basis}) has no registry versions or aliases; pull "
                f"{self.basis_ref} from a registry instead"
            )
        if self.hold_zero_from and self.method != "full":
            raise InvalidInput("holding weights at zero is the full-space experiment: method full")
        if self.record_every < 1:
            raise InvalidInput(f"record_every must be at least 1, got {self.record_every}")
        if self.hold_zero_mode not in CONTROL_MODES:
            raise InvalidInput(
                f"hold_zero_mode {self.hold_zero_mode!r} is not one of {list(CONTROL_MODES)}"
            )
        if self.eval_split not in ("dev", "tune"):
            raise InvalidInput(f"eval_split must be 'dev' or 'tune', got {self.eval_split!r}")
        if self.eval_split == "tune" and not self.tune_fraction:
            raise InvalidInput("eval_split 'tune' needs a tuning split: give tune_fraction > 0")

    def _fold_old_basis_fields(
        self,
        task: str | None,
        kind: str | None,
        version: int | None,
        alias: str | None,
        token: str | None,
    ) -> None:
        """Turn the old flat keywords into basis_ref and registry (the same meaning as before)."""
        flat = (task, kind, version, alias)
        if not isinstance(self.registry, str) and flat == (None,) * 4:
            if token is not None and self.registry is not None:
                raise InvalidInput("give the registry token inside RegistryConfig")
            return  # a token without a registry was always ignored (the CLI reads it from env)
        warnings.warn(
            "RunSpec's basis_task, basis_kind, basis_version, basis_alias, token and "
            "registry=URL are deprecated: pass basis_ref=BasisRef(...) and "
            "registry=RegistryConfig(url, token)",
            DeprecationWarning,
            stacklevel=4,  # the caller of RunSpec(...), through __init__ and __post_init__
        )
        if self.basis_ref is not None and flat != (None,) * 4:
            raise InvalidInput("give basis_ref or the old basis_* fields, not both")
        ref, self.registry = basis_from_flags(
            self.task,
            self.method,
            basis_task=task,
            basis_kind=kind,
            basis_version=version,
            basis_alias=alias,
            registry=self.registry,
            token=token,
        )
        self.basis_ref = self.basis_ref or ref


def basis_from_flags(
    task: str,
    method: str,
    *,
    basis_task: str | None = None,
    basis_kind: str | None = None,
    basis_version: int | None = None,
    basis_alias: str | None = None,
    registry: str | RegistryConfig | None = None,
    token: str | None = None,
) -> tuple[BasisRef | None, RegistryConfig | None]:
    """RunSpec's basis_ref and registry from flat flags (`tinysub finetune`'s --basis-task,
    --basis-kind, --basis-version, --basis-alias, --registry, --token; RunSpec's old keywords).

    Beside a registry the ref is always made: task defaults to the run's, kind to the method's
    (task for the others). Beside a local basis only a named task makes one (the label its
    reference records): without a kind, methods that train in a stored basis check the kind
    themselves, and generated bases use the store only for its shapes.
    """
    if isinstance(registry, str):
        registry = RegistryConfig(registry, token=token)
    elif registry is not None and token is not None:
        raise InvalidInput("give the registry token inside RegistryConfig")
    if (basis_task, basis_kind, basis_version, basis_alias) == (None,) * 4:
        return None, registry
    if registry is not None or basis_version is not None or basis_alias is not None:
        kind = basis_kind or BASIS_KIND.get(method, "task")
        ref = BasisRef(basis_task or task, kind, version=basis_version, alias=basis_alias)
        return ref, registry
    local_kind = basis_kind or BASIS_KIND.get(method)
    if basis_task is not None and local_kind is not None:
        return BasisRef(basis_task, local_kind), registry
    return None, registry


def open_source(spec: RunSpec) -> BasisSource | None:
    """The basis the spec names, or None (full, freeze, and generated bases)."""
    if spec.registry is not None:
        if spec.method not in BASIS_KIND and spec.method != "random":
            return None
        assert spec.basis_ref is not None  # RunSpec fills it in beside a registry
        return RegistryBasisSource.from_ref(spec.registry, spec.basis_ref)
    if spec.basis:
        ref = spec.basis_ref
        source = StoreBasisSource.open(spec.basis, task=ref.task if ref else None)
        if ref and source.kind != ref.kind:
            raise InvalidInput(f"{spec.basis} is a {source.kind!r} basis, not {ref.kind!r}")
        return source
    if spec.method in BASIS_KIND:
        raise InvalidInput(
            f"method {spec.method!r} needs a basis: a local --basis PATH or --registry URL "
            "with --basis-task"
        )
    return None
