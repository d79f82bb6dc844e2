"""Settings of subspace fine-tuning: one dataclass that checks itself on construction.

Defaults follow Zhang, Liu and Shao (2023), appendix A.1 (an ensemble of h = 16 vectors per
layer, learning rate 0.01 for theta, embeddings and the classification head trained, everything
else frozen) with one change: theta is measured in the trajectory's own units
(``theta_scale="extent"``, see `SubspaceConfig`), so that more dimensions never hurt.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

from storage.errors import InvalidInput

INITS = ("random", "zeros")
BASIS_DTYPES = ("float32", "float16")
SCOPES = ("layer", "global")
# How theta's coordinates are scaled before V: "extent" multiplies coordinate k by the
# trajectory's own extent along v_k (theta in the trajectory's units); "none" is the paper's
# rule, V theta with unit-scaled coordinates.
THETA_SCALES = ("extent", "none")
# Parts of the model that can train in the full space beside theta (see
# worker.finetune.reparam.parameter_parts):
# embeddings (`*.embeddings.*`; a decoder's token and position embeddings, GPT-2's wte/wpe,
# Llama's embed_tokens, and so a tied lm_head), head (pooler and classifier, an untied lm_head),
# layernorm (the LayerNorm / RMSNorm weights inside the layers, trained directly on top of
# V theta), encoder_other (body parameters outside every layer: MPNet's relative_attention_bias,
# a decoder's final norm).
PARTS = ("embeddings", "head", "layernorm", "encoder_other")


@dataclass(frozen=True)
class SubspaceConfig:
    """How the encoder is re-parameterized: theta_l = theta0_l + V_l (1/h) sum_i theta_t^(i).

    Parameters
    ----------
    ensemble:
        h, the number of theta vectors averaged per layer (the paper's Eq. 4 uses 16).
    theta_lr:
        Learning rate of the theta vectors. 0.2 for the default rule (extent lrs 0.06-0.6 all
        scored within a point at dims 8-32: docs/results/theta_rule); the paper used 0.01 with
        plain V theta (theta_scale="none"), which generated bases (random, fastfood) always use.
    theta_scale:
        ``extent`` (default): the update is V diag(e) theta, e_k the trajectory's own extent
        along v_k (the RMS over its rows of their motion from theta0 along v_k, recorded by the
        kernel with the basis). In delta mode e_k = sigma_k / sqrt(t) and row i of the
        trajectory is V diag(e) sqrt(t) u_i (u_i the i-th row of the left singular vectors), so
        theta of order 1 reaches where the trajectory went. In raw mode v_1 is theta0's own
        direction and sigma_1 measures theta0, not the motion; the extent measures the motion in
        every mode. Adam moves every coordinate by about the learning rate per step whatever
        its gradient's size, so with ``none`` (the paper's V theta) a direction with
        sigma_k = 1e-4 sigma_1 moves as far as v_1 does: each added dimension adds a large step
        along a direction the trajectory barely used, and the score falls as dim grows.
        Scaling makes Adam's step along v_k proportional to e_k, so a weak direction can only
        move weakly. Generated bases (random, fastfood) have no trajectory and always use
        ``none``.
    init:
        ``random``: each of the h vectors is drawn from N(0, init_std^2), as in the paper, which
        averages differently initialized vectors to cut the variance. ``zeros``: theta starts at
        0, so the wrapped model starts exactly at the pre-trained weights (Aghajanyan et al.).
        Note: the loss depends on the h vectors only through their mean, so every member gets
        the same gradient (1/h of the mean's). With Adam and no weight decay on theta they also
        get the same update, so the ensemble trains exactly like one vector started at the mean
        of the h draws: its effect is an initial spread of init_std / sqrt(h) (a test checks it).
    init_std:
        Standard deviation of the random initialization (the paper does not state it).
    train_parts:
        Which parts train in the full space beside theta (see ``PARTS``).
    basis_dtype:
        Storage dtype of V in memory. float16 halves the memory; products run in float32.
    scope:
        ``layer``: one theta per encoder layer (the paper). ``global``: one theta shared by all
        layers, V_l being the layer's slice of a whole-encoder basis.
    rank:
        The subspace's dimension k (the paper's intrinsic dimension d): for a stored basis, keep
        its first ``rank`` columns (they are sorted by singular value); None keeps them all.
        Required for generated bases (random, fastfood). Its old name ``dim`` still loads from
        saved runs (``from_dict``) and reads (``.dim``, with a DeprecationWarning) for one
        release.
    said:
        Aghajanyan et al.'s structure-aware variant (SAID): a learned scale lambda_l per layer
        (initialized to 1) multiplying that layer's projection. Made for fastfood with a global
        theta; accepted by every subspace method.
    basis_seed:
        Seed of generated bases (random orthonormal, Fastfood) and of the theta initialization.
    block_rows:
        Rows of V upcast at a time when V is float16 (bounds the float32 scratch memory).
    fastfood_block:
        Largest Fastfood block (a power of two); None = one block of the next power of two >= D.
    allow_short:
        When ``rank`` exceeds the rank of every layer (the kernel's rcond cut directions it could
        not compute accurately), keep each layer's columns and record them as short layers
        instead of refusing.
    rule:
        Grouping rule of the layout (``auto`` detects bert/roberta/mpnet ``encoder.layer.N.``,
        GPT-2's ``h.N.`` and Llama/Mistral/Qwen's ``layers.N.``).
    """

    ensemble: int = 16
    theta_lr: float = 0.2
    theta_scale: str = "extent"
    init: str = "random"
    init_std: float = 0.01
    train_parts: tuple[str, ...] = ("embeddings", "head")
    basis_dtype: str = "float32"
    scope: str = "layer"
    rank: int | None = None
    said: bool = False
    basis_seed: int = 0
    block_rows: int = 1 << 16
    # A rank beyond every layer's rank: refused (False), or each layer keeps all the columns it
    # has and the run records them (True; the paper experiment, whose dims are fixed before the
    # trajectory's accurate rank is known).
    allow_short: bool = False
    fastfood_block: int | None = None
    rule: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.train_parts, str | list):
            parts = (self.train_parts,) if isinstance(self.train_parts, str) else self.train_parts
            object.__setattr__(self, "train_parts", tuple(parts))
        if not isinstance(self.ensemble, int) or self.ensemble < 1:
            raise InvalidInput(f"ensemble size h must be a positive integer, got {self.ensemble}")
        if not self.theta_lr > 0:
            raise InvalidInput(f"theta learning rate must be positive, got {self.theta_lr}")
        if self.theta_scale not in THETA_SCALES:
            raise InvalidInput(
                f"theta_scale {self.theta_scale!r} is not one of {list(THETA_SCALES)}"
            )
        if self.init not in INITS:
            raise InvalidInput(f"init {self.init!r} is not one of {list(INITS)}")
        if self.init == "random" and not self.init_std > 0:
            raise InvalidInput(f"init_std must be positive for random init, got {self.init_std}")
        bad = [p for p in self.train_parts if p not in PARTS]
        if bad:
            raise InvalidInput(f"unknown parts {bad}; trainable parts are {list(PARTS)}")
        if self.basis_dtype not in BASIS_DTYPES:
            raise InvalidInput(
                f"basis dtype {self.basis_dtype!r} is not one of {list(BASIS_DTYPES)}"
            )
        if self.scope not in SCOPES:
            raise InvalidInput(f"scope {self.scope!r} is not one of {list(SCOPES)}")
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise InvalidInput(f"subspace rank must be a positive integer, got {self.rank}")
        if self.block_rows < 1:
            raise InvalidInput(f"block_rows must be positive, got {self.block_rows}")
        fb = self.fastfood_block
        if fb is not None and (fb < 2 or fb & (fb - 1)):
            raise InvalidInput(f"fastfood_block must be a power of two >= 2, got {fb}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_parts"] = list(self.train_parts)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubspaceConfig:
        d = dict(data)
        if "dim" in d and "rank" not in d:  # saved before `dim` was renamed `rank`
            d["rank"] = d.pop("dim")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInput(f"unknown subspace settings {unknown}")
        if "train_parts" in d:
            d["train_parts"] = tuple(d["train_parts"])
        return cls(**d)


def _old_dim(self: SubspaceConfig) -> int | None:
    warnings.warn("SubspaceConfig.dim is now .rank", DeprecationWarning, stacklevel=2)
    return self.rank


# Reading `.dim` keeps working for one release. A property, not a field: dataclasses.replace
# copies fields only, so it never sees the old name.
SubspaceConfig.dim = property(_old_dim)  # type: ignore[attr-defined]
