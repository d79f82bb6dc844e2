"""Measurements that explain subspace fine-tuning: how much of a run a basis can hold.

spectrum_table       per layer: singular values, energy, cumulative energy at k = 1, 2, 4, ... 32
oracle_projection    |P_k delta| / |delta| of the full fine-tuning update delta, per k
oracle_vectors       theta0 + P_k delta: the best a k-dimensional subspace run could reach
oracle_state         a full model's state dict with every encoder layer at its oracle point
trajectory_extent    how far the recorded trajectory went along each basis direction
theta_summary        what a trained SubspaceModel did: |theta|, |V theta|, relative to |theta0|
diverged             a run that ends below Freeze on its task and seed
median_and_mean      the summary of one cell of a results table

P_k = V_k V_k^T, V_k the first k columns of an orthonormal basis V (D, k_max). Every product over
D runs on blocks of `BLOCK_ROWS` rows upcast to float64, so memory stays O(D) plus the basis
itself, and a 7M-row layer never needs a float64 copy of V (1.8 GB at k = 32).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from storage.arrays import float_shapes
from storage.basis import BasisStore
from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import Group, Layout, locate_params
from storage.trajectory import TrajectoryStore
from storage.vocabulary import BasisMode
from worker.finetune.projection import DenseProjection
from worker.finetune.reparam import SubspaceModel, _key
from worker.svd.gram import check_mode

log = logging.getLogger(__name__)

SPECTRUM_KS = (1, 2, 4, 8, 16, 32)
BLOCK_ROWS = 1 << 16  # rows of V upcast at a time: 16 MiB of float64 at k = 32
ORTHONORMAL_TOL = 1e-3


# ------------------------------------------------------------------------------ spectrum
def spectrum_table(basis: BasisStore) -> list[dict]:
    """One row per layer: rank, singular values, energy per component (the fraction of the
    trajectory matrix' squared Frobenius norm each one holds), cumulative energy at each k of
    `SPECTRUM_KS` up to the rank, the energy all kept columns hold, and the total.

    In a raw-mode basis the first component is theta0's own direction and holds nearly all the
    energy; the fine-tuning motion is in the rest (see `trajectory_extent`).
    """
    rows = []
    for name, info in basis.layers.items():
        cumulative = np.cumsum(np.asarray(info.energy, dtype=np.float64))
        rows.append(
            {
                "layer": name,
                "rank": info.rank,
                "singular_values": [float(s) for s in info.singular_values],
                "energy": [float(e) for e in info.energy],
                "cumulative_energy": [
                    {"k": k, "captured": float(cumulative[k - 1])}
                    for k in SPECTRUM_KS
                    if k <= min(info.rank, cumulative.size)
                ],
                "captured": float(cumulative[-1]) if cumulative.size else 0.0,
                "total_energy": float(info.total_energy),
            }
        )
    return rows


# ------------------------------------------------------------------------ oracle updates
def _blocks(n: int) -> Iterator[slice]:
    for a in range(0, n, BLOCK_ROWS):
        yield slice(a, min(a + BLOCK_ROWS, n))


def _check_pair(theta0: np.ndarray, final: np.ndarray, v: np.ndarray) -> None:
    if theta0.ndim != 1 or theta0.shape != final.shape:
        raise InvalidInput(
            f"theta0 {theta0.shape} and final {final.shape} must be flat vectors of one size"
        )
    _check_basis(v, theta0.size)


def _check_basis(v: np.ndarray, rows: int) -> None:
    if v.ndim != 2 or v.shape[0] != rows or v.shape[1] < 1:
        raise InvalidInput(f"the basis has shape {v.shape}; the layer needs ({rows}, k >= 1)")


def check_orthonormal(v: np.ndarray, tol: float = ORTHONORMAL_TOL) -> None:
    """Refuse V (D, k) unless max |V^T V - I| <= tol.

    The products run in float32 per block of `BLOCK_ROWS` rows (one sgemm each) and are summed
    in float64: the rounding, about sqrt(BLOCK_ROWS) * 6e-8 = 2e-5, sits far below `tol`.
    """
    gram = np.zeros((v.shape[1], v.shape[1]))
    for rows in _blocks(v.shape[0]):
        block = np.asarray(v[rows], dtype=np.float32)
        gram += block.T @ block
    err = float(np.max(np.abs(gram - np.eye(v.shape[1]))))
    if not err <= tol:
        raise InvalidInput(
            f"the basis ({v.shape[0]} x {v.shape[1]}) is not orthonormal: max |V^T V - I| = "
            f"{err:.3g} > {tol:g}. A global-scope basis is orthonormal over the whole encoder, "
            "not per layer; project with a layer-wise basis"
        )


def coefficients(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """V^T x (k,) in float64, V (D, k) and x (D,) read `BLOCK_ROWS` rows at a time."""
    out = np.zeros(v.shape[1])
    for rows in _blocks(v.shape[0]):
        out += np.asarray(v[rows], dtype=np.float64).T @ np.asarray(x[rows], dtype=np.float64)
    return out


def _delta_coefficients(
    theta0: np.ndarray, final: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(delta (D,) float64, V as an array, c = V^T delta (k,)), after checking V."""
    theta0, final, v = np.asarray(theta0), np.asarray(final), np.asarray(v)
    _check_pair(theta0, final, v)
    check_orthonormal(v)
    delta = final.astype(np.float64) - theta0.astype(np.float64)  # (D,)
    return delta, v, coefficients(v, delta)


def _check_ks(ks: Sequence[int], rank: int) -> list[int]:
    ks = [int(k) for k in ks]
    bad = [k for k in ks if not 1 <= k <= rank]
    if not ks or bad:
        raise InvalidInput(f"ks {ks} must be non-empty and within 1..{rank}, the basis' rank")
    return ks


def oracle_projection(
    theta0: np.ndarray, final: np.ndarray, v: np.ndarray, ks: Sequence[int]
) -> list[dict]:
    """How much of one layer's full fine-tuning update the first k directions of V hold.

    delta = final - theta0 (float64); c = V^T delta; P_k delta = V_k c_k. For each k returns
    {'k', 'captured': |P_k delta| / |delta|, 'residual': |delta - P_k delta| / |delta|}. Both
    norms are summed block by block from the projections themselves, not as
    sqrt(1 - captured^2): a residual of 1e-6 would vanish in that cancellation. Captured is
    non-decreasing in k, and captured^2 + residual^2 = 1 up to V's orthonormality error.

    V must have orthonormal columns (`InvalidInput` otherwise). Memory O(D + BLOCK_ROWS k).
    """
    delta, v, c = _delta_coefficients(theta0, final, v)
    ks = _check_ks(ks, v.shape[1])
    norm = float(np.sqrt(delta @ delta))
    if norm == 0:
        raise InvalidInput("final equals theta0: the layer did not move, there is nothing to hold")
    top = max(ks)
    captured, residual = np.zeros(len(ks)), np.zeros(len(ks))
    for rows in _blocks(v.shape[0]):
        # Column j of `partial` is P_{j+1} delta on these rows: every k from one product.
        partial = np.cumsum(np.asarray(v[rows, :top], dtype=np.float64) * c[:top], axis=1)
        for i, k in enumerate(ks):
            p = partial[:, k - 1]
            captured[i] += p @ p
            r = delta[rows] - p
            residual[i] += r @ r
    return [
        {
            "k": k,
            "captured": math.sqrt(captured[i]) / norm,
            "residual": math.sqrt(residual[i]) / norm,
        }
        for i, k in enumerate(ks)
    ]


def oracle_vectors(theta0: np.ndarray, final: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """theta0 + P_k (final - theta0) as float32 (D,): the layer at the best point a run in the
    first k directions of V could reach (in float64, then rounded once)."""
    delta, v, c = _delta_coefficients(theta0, final, v)
    (k,) = _check_ks([k], v.shape[1])
    theta0 = np.asarray(theta0)
    out = np.empty(v.shape[0], dtype=np.float32)
    for rows in _blocks(v.shape[0]):
        step = np.asarray(v[rows, :k], dtype=np.float64) @ c[:k]
        out[rows] = np.asarray(theta0[rows], dtype=np.float64) + step
    return out


def unflatten_group(vec: np.ndarray, group: Group) -> dict[str, np.ndarray]:
    """A group's flat vector (D,) as its parameters: relative name -> view shaped like it.

    The inverse of `storage.arrays.flatten_state` for one group (same offsets, C order).
    """
    if vec.shape != (group.size,):
        raise LayoutMismatch(f"group {group.name!r} has {group.size} values, got {vec.shape}")
    return {
        spec.name: vec[spec.offset : spec.offset + spec.numel].reshape(spec.shape)
        for spec in group.params
    }


def _group_input(rows: Mapping[str, np.ndarray], layout: Layout, what: str) -> None:
    missing = [g for g in layout.group_names if g not in rows]
    if missing:
        raise LayoutMismatch(f"{what} has no vectors for groups {missing}")


def oracle_state(
    model_state: Mapping[str, torch.Tensor],
    layout: Layout,
    theta0_rows: Mapping[str, np.ndarray],
    final_rows: Mapping[str, np.ndarray],
    bases: Mapping[str, np.ndarray],
    k: int,
) -> dict[str, torch.Tensor]:
    """The fully fine-tuned model with every encoder layer moved to its oracle point at k.

    Each layout group becomes theta0 + P_k (final - theta0) (see `oracle_vectors`), written in
    the dtype and device of `model_state`'s tensor; everything outside the groups (embeddings,
    head) is `model_state`'s own tensor, not copied. Evaluating the result gives the oracle
    score "with full's head". `model_state` may carry another class prefix than the layout.

    A layer whose basis has rank below k keeps all its columns, as `methods.prepare` does when
    training in it, so the oracle and the run compare at the same subspace.
    """
    if int(k) < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    for rows, what in ((theta0_rows, "theta0_rows"), (final_rows, "final_rows"), (bases, "bases")):
        _group_input(rows, layout, what)
    names = locate_params(layout, float_shapes(model_state), "the model state")
    state = dict(model_state)
    for group in layout.groups:
        v = np.asarray(bases[group.name])
        _check_basis(v, group.size)
        kk = min(int(k), v.shape[1])
        if kk < k:
            log.warning("basis layer %s has rank %d < %d: all its columns", group.name, kk, k)
        vec = oracle_vectors(theta0_rows[group.name], final_rows[group.name], v, kk)
        pieces = unflatten_group(vec, group)
        for spec, full in zip(group.params, names[group.name], strict=True):
            ref = model_state[full]
            state[full] = torch.from_numpy(pieces[spec.name]).to(dtype=ref.dtype, device=ref.device)
    return state


# ----------------------------------------------------------------------------- trajectory
def trajectory_extent(
    traj: TrajectoryStore, layer: str, v: np.ndarray, mode: BasisMode | str = BasisMode.DELTA
) -> np.ndarray:
    """(k,) for each column v_k of V: max over recorded rows i of |(w_i - w_0) . v_k|.

    How far the trajectory went along each direction, in the units of V theta's coordinates
    (with theta_scale="extent" the run's coordinate k is e_k theta_k, e_k the RMS of the same
    motion that this takes the maximum of). For a delta basis
    this is max_i |U_ik| sigma_k. The same motion is measured in every mode, `raw` included:
    a raw basis' v_1 is theta0's own direction, and w_i . v_1 would measure |theta0|, not the
    fine-tuning; what bounds a run is how far fine-tuning moved, so theta0 is subtracted always.
    `mode` names the basis' mode and is checked only.

    Rows are read one at a time; memory O(D k) (V itself) plus two float64 rows.
    """
    check_mode(mode)
    size = traj.layout.group(layer).size
    v = np.asarray(v)
    _check_basis(v, size)
    if traj.num_rows < 2:
        raise InvalidInput(f"the trajectory at {traj.url} has {traj.num_rows} row(s); need 2")
    w0 = traj.read_row(0, layer).astype(np.float64)  # (D,)
    extent = np.zeros(v.shape[1])
    for i in range(1, traj.num_rows):
        delta = traj.read_row(i, layer).astype(np.float64) - w0
        extent = np.maximum(extent, np.abs(coefficients(v, delta)))
    return extent


# ------------------------------------------------------------------------------ a trained run
def _norm(values: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in values))


@torch.no_grad()
def theta_summary(
    model: SubspaceModel, theta0_rows: Mapping[str, np.ndarray] | None = None
) -> dict:
    """Per layer: what a trained subspace run did, as JSON-ready floats.

    'theta_abs': |theta_k| of the ensemble mean the model uses; 'coord_abs': |coordinate k of
    the update| (theta_k times the direction's scale, e_k under theta_scale="extent", and
    the SAID scale), comparable with `trajectory_extent` for a dense basis (for Fastfood it
    is theta times SAID: its directions are not columns of an orthonormal V); 'theta_norm': |theta|;
    'update_norm': |V theta|, the layer's update in parameter space; 'theta0_norm' and
    'relative_update': |V theta| / |theta0_layer|.

    theta0 comes from `theta0_rows` (e.g. the trajectory's row 0) when given, else from the
    base model, whose encoder parameters are theta0 unless its LayerNorms trained beside theta
    (train_parts holds 'layernorm'): then both are None.
    """
    updates = model.updates()
    parts = model.subspace_config.train_parts
    out = {}
    for group in model.layout.groups:
        theta = model.theta(group.name).detach().double().cpu()  # (k,)
        coord = theta.clone()
        proj = model.subspace_projections[_key(group.name)]
        # Only a dense V has per-direction scales (Fastfood's `subspace_scale` is row norms).
        scale = getattr(proj, "subspace_scale", None) if isinstance(proj, DenseProjection) else None
        if scale is not None:
            coord = coord * scale.detach().double().cpu()
        if model.subspace_said:
            coord = coord * float(model.subspace_said[_key(group.name)])
        update_norm = _norm([updates[group.name]])
        if theta0_rows is not None:
            theta0_norm = float(np.linalg.norm(np.asarray(theta0_rows[group.name], np.float64)))
        elif "layernorm" in parts:
            theta0_norm = None
        else:
            theta0_norm = _norm(model.base.get_parameter(n) for n in group.full_names())
        out[group.name] = {
            "theta_abs": [float(x) for x in theta.abs()],
            "coord_abs": [float(x) for x in coord.abs()],
            "theta_norm": float(theta.norm()),
            "update_norm": update_norm,
            "theta0_norm": theta0_norm,
            "relative_update": update_norm / theta0_norm if theta0_norm else None,
        }
    return out


# ------------------------------------------------------------------------------- the report
def diverged(score: float, freeze_score: float) -> bool:
    """Whether a run ended below Freeze (encoder frozen) on its task and seed.

    Freeze is what the embeddings and head reach alone, so a subspace run below it made the
    encoder worse than not touching it. A NaN score counts as diverged.
    """
    if not math.isfinite(freeze_score):
        raise InvalidInput(f"the freeze score {freeze_score} is not a number to compare with")
    return not score >= freeze_score


def median_and_mean(scores: Iterable[float]) -> dict:
    """{'median', 'mean', 'n', 'nonfinite'} of the finite scores (None when there are none).

    Non-finite scores (a NaN metric) are counted in 'nonfinite' and left out of both.
    """
    values = np.asarray([float(s) for s in scores], dtype=np.float64)
    finite = values[np.isfinite(values)]
    empty = finite.size == 0
    return {
        "median": None if empty else float(np.median(finite)),
        "mean": None if empty else float(np.mean(finite)),
        "n": int(finite.size),
        "nonfinite": int(values.size - finite.size),
    }
