"""The diagnostics against float64 numpy references, on random vectors and a tiny BERT whose
trajectory is theta0 plus a few random perturbations (so its delta basis spans every row)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from storage.arrays import flatten_state
from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import layout_from_model
from storage.trajectory import TrajectoryStore
from tests.worker.finetune.conftest import make_model
from worker.finetune import diagnostics
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.sources import StoreBasisSource

STEPS = 4  # checkpoints after theta0: the delta basis has rank STEPS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny BERT, a trajectory of theta0 + STEPS random perturbations, its delta basis."""
    from worker.svd.bases import task_basis

    tmp = tmp_path_factory.mktemp("diag")
    model = make_model("bert", seed=0)
    layout = layout_from_model(model)
    theta0 = flatten_state(model.state_dict(), layout)
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(str(tmp / "traj"), layout, chunk_cols=512)
    store.append(theta0, step=0)
    rows = [theta0]
    for step in range(1, STEPS + 1):
        row = {
            g: (v + 0.01 * rng.standard_normal(v.size)).astype(np.float32)
            for g, v in theta0.items()
        }
        store.append(row, step=step)
        rows.append(row)
    basis = task_basis(store.url, str(tmp / "basis"), STEPS, mode="delta").bases[0]
    return {"layout": layout, "store": store, "basis": basis, "rows": rows}


def _delta_matrix(run, group: str) -> np.ndarray:
    """(STEPS, D) float64: each checkpoint minus theta0."""
    w = np.stack([r[group] for r in run["rows"]]).astype(np.float64)
    return w[1:] - w[0]


def _orthonormal(d: int, k: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    return q  # (d, k) float64


def _reference(theta0, final, v, k) -> tuple[float, float, np.ndarray]:
    delta = final.astype(np.float64) - theta0.astype(np.float64)
    vk = v[:, :k].astype(np.float64)
    p = vk @ (vk.T @ delta)
    n = np.linalg.norm(delta)
    return np.linalg.norm(p) / n, np.linalg.norm(delta - p) / n, theta0 + p


# ------------------------------------------------------------------------------- spectrum
def test_spectrum_table_is_the_svd_of_the_delta_rows(run):
    table = diagnostics.spectrum_table(run["basis"])
    assert [r["layer"] for r in table] == run["layout"].group_names
    for row in table:
        x = _delta_matrix(run, row["layer"])
        s = np.linalg.svd(x, compute_uv=False)
        total = float(np.sum(x**2))
        assert row["rank"] == STEPS
        np.testing.assert_allclose(row["singular_values"], s, rtol=1e-6)
        np.testing.assert_allclose(row["energy"], s**2 / total, rtol=1e-6)
        # Only the k of 1, 2, 4, ... that the rank allows.
        assert [c["k"] for c in row["cumulative_energy"]] == [1, 2, 4]
        for c in row["cumulative_energy"]:
            assert c["captured"] == pytest.approx(np.sum(s[: c["k"]] ** 2) / total, rel=1e-6)
        # Delta rows span exactly STEPS directions: the kept columns hold all of the energy.
        assert row["captured"] == pytest.approx(1.0, abs=1e-6)
        assert row["total_energy"] == pytest.approx(total, rel=1e-6)
    json.dumps(table)


# --------------------------------------------------------------------- oracle projection
def test_a_delta_in_the_span_is_captured_whole_at_full_rank():
    d, k = 1000, 6
    v = _orthonormal(d, k)
    theta0 = np.random.default_rng(1).standard_normal(d)
    final = theta0 + v @ np.array([3.0, -2.0, 1.0, 0.5, 0.25, 0.1])
    out = diagnostics.oracle_projection(theta0, final, v, range(1, k + 1))
    assert out[-1]["k"] == k
    assert out[-1]["captured"] == pytest.approx(1.0, abs=1e-12)
    assert out[-1]["residual"] < 1e-12
    # The same with V and the vectors in float32, as the stores hold them.
    v32 = v.astype(np.float32)
    final32 = (theta0 + v32.astype(np.float64) @ np.arange(1.0, k + 1)).astype(np.float32)
    theta32 = theta0.astype(np.float32)
    full = diagnostics.oracle_projection(theta32, final32, v32, [k])[0]
    assert full["captured"] == pytest.approx(1.0, abs=1e-5)
    assert full["residual"] < 1e-5


def test_oracle_projection_matches_a_float64_reference_in_blocks(monkeypatch):
    monkeypatch.setattr(diagnostics, "BLOCK_ROWS", 97)  # many blocks, a ragged last one
    d, k = 1000, 8
    rng = np.random.default_rng(2)
    v = _orthonormal(d, k, seed=3).astype(np.float32)
    theta0 = rng.standard_normal(d).astype(np.float32)
    # Mostly in the span, with decreasing weight, plus an out-of-span part.
    final = theta0 + (v @ (2.0 ** -np.arange(k))) + 0.1 * rng.standard_normal(d)
    ks = list(range(1, k + 1))
    out = diagnostics.oracle_projection(theta0, final.astype(np.float32), v, ks)
    assert [o["k"] for o in out] == ks
    for o in out:
        captured, residual, _ = _reference(theta0, final.astype(np.float32), v, o["k"])
        assert o["captured"] == pytest.approx(captured, rel=1e-10)
        assert o["residual"] == pytest.approx(residual, rel=1e-10)
        assert o["captured"] ** 2 + o["residual"] ** 2 == pytest.approx(1.0, abs=1e-6)
    captured = [o["captured"] for o in out]
    residual = [o["residual"] for o in out]
    assert all(b >= a for a, b in zip(captured, captured[1:], strict=False))
    assert all(b <= a for a, b in zip(residual, residual[1:], strict=False))
    assert 0 < captured[0] < captured[-1] < 1


def test_oracle_vectors_are_theta0_plus_the_projected_update(monkeypatch):
    monkeypatch.setattr(diagnostics, "BLOCK_ROWS", 64)
    d, k = 500, 5
    rng = np.random.default_rng(4)
    v = _orthonormal(d, k, seed=5).astype(np.float32)
    theta0 = rng.standard_normal(d).astype(np.float32)
    final = (theta0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    for kk in (1, 3, 5):
        out = diagnostics.oracle_vectors(theta0, final, v, kk)
        assert out.dtype == np.float32 and out.shape == (d,)
        *_, want = _reference(theta0.astype(np.float64), final, v, kk)
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_bad_bases_and_arguments_are_refused():
    d, k = 200, 4
    v = _orthonormal(d, k)
    theta0 = np.zeros(d)
    final = np.ones(d)
    with pytest.raises(InvalidInput, match="not orthonormal"):
        diagnostics.oracle_projection(theta0, final, v * 1.01, [1])
    skewed = v.copy()
    skewed[:, 1] += 0.01 * v[:, 0]
    with pytest.raises(InvalidInput, match="not orthonormal"):
        diagnostics.oracle_vectors(theta0, final, skewed, 2)
    for ks in ([], [0], [k + 1]):
        with pytest.raises(InvalidInput, match="within 1"):
            diagnostics.oracle_projection(theta0, final, v, ks)
    with pytest.raises(InvalidInput, match="did not move"):
        diagnostics.oracle_projection(final, final, v, [1])
    with pytest.raises(InvalidInput, match="shape"):
        diagnostics.oracle_projection(theta0[:-1], final[:-1], v, [1])
    with pytest.raises(InvalidInput, match="one size"):
        diagnostics.oracle_projection(theta0, final[:-1], v, [1])


# --------------------------------------------------------------------------- oracle state
def _finetuned_state(run) -> dict[str, torch.Tensor]:
    """The 'fully fine-tuned' model: encoder at the trajectory's last row, a moved head."""
    model = make_model("bert", seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for group in run["layout"].groups:
        for name, value in diagnostics.unflatten_group(run["rows"][-1][group.name], group).items():
            state[group.prefix + name] = torch.from_numpy(value.copy())
    state["classifier.weight"] = state["classifier.weight"] + 1.0
    return state


def test_oracle_state_at_full_rank_is_the_fine_tuned_model(run):
    layout = run["layout"]
    state = _finetuned_state(run)
    bases = {g: run["basis"].load(g) for g in layout.group_names}
    oracle = diagnostics.oracle_state(state, layout, run["rows"][0], run["rows"][-1], bases, STEPS)
    assert set(oracle) == set(state)
    in_layers = {n for g in layout.groups for n in g.full_names()}
    for name, value in oracle.items():
        if name in in_layers:
            assert value.dtype == state[name].dtype
            torch.testing.assert_close(value, state[name], rtol=0, atol=1e-5)
        else:
            assert value is state[name]  # embeddings, head: full's own
    # It loads into the model, and flattening it gives the final rows back.
    model = make_model("bert", seed=1)
    model.load_state_dict(oracle, strict=True)
    back = flatten_state(model.state_dict(), layout)
    for g in layout.group_names:
        np.testing.assert_allclose(back[g], run["rows"][-1][g], rtol=0, atol=1e-5)


def test_oracle_state_below_full_rank_is_the_projection(run):
    layout = run["layout"]
    state = _finetuned_state(run)
    bases = {g: run["basis"].load(g) for g in layout.group_names}
    oracle = diagnostics.oracle_state(state, layout, run["rows"][0], run["rows"][-1], bases, 2)
    flat = flatten_state(oracle, layout)
    for g in layout.group_names:
        want = diagnostics.oracle_vectors(run["rows"][0][g], run["rows"][-1][g], bases[g], 2)
        np.testing.assert_array_equal(flat[g], want)
        assert np.max(np.abs(flat[g] - run["rows"][-1][g])) > 1e-3  # a rank-2 oracle misses
    # A k beyond the rank keeps all columns, as training in that basis would.
    beyond = diagnostics.oracle_state(state, layout, run["rows"][0], run["rows"][-1], bases, 32)
    for name in layout.groups[0].full_names():
        torch.testing.assert_close(beyond[name], state[name], rtol=0, atol=1e-5)
    with pytest.raises(LayoutMismatch, match="bases"):
        diagnostics.oracle_state(
            state, layout, run["rows"][0], run["rows"][-1], {"layer.0": bases["layer.0"]}, 2
        )


def test_unflatten_inverts_flatten(run):
    layout = run["layout"]
    model = make_model("bert", seed=3)
    flat = flatten_state(model.state_dict(), layout)
    for group in layout.groups:
        parts = diagnostics.unflatten_group(flat[group.name], group)
        for name, value in parts.items():
            np.testing.assert_array_equal(
                value, model.get_parameter(group.prefix + name).detach().numpy()
            )
    with pytest.raises(LayoutMismatch):
        diagnostics.unflatten_group(flat["layer.0"][:-1], layout.groups[0])


# ------------------------------------------------------------------------- trajectory extent
@pytest.mark.parametrize("mode", ["delta", "raw", "centered"])
def test_trajectory_extent_is_left_singular_vectors_times_sigma(run, mode):
    for group in run["layout"].group_names:
        u, s, _ = np.linalg.svd(_delta_matrix(run, group), full_matrices=False)
        want = np.max(np.abs(u), axis=0) * s  # (k,)
        got = diagnostics.trajectory_extent(run["store"], group, run["basis"].load(group), mode)
        assert got.shape == (STEPS,)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_trajectory_extent_refuses_bad_input(run, tmp_path):
    v = run["basis"].load("layer.0")
    with pytest.raises(InvalidInput, match="mode"):
        diagnostics.trajectory_extent(run["store"], "layer.0", v, "pca")
    with pytest.raises(InvalidInput, match="shape"):
        diagnostics.trajectory_extent(run["store"], "layer.0", v[:-1], "delta")
    lone = TrajectoryStore.create(str(tmp_path / "lone"), run["layout"], chunk_cols=512)
    lone.append(run["rows"][0])
    with pytest.raises(InvalidInput, match="row"):
        diagnostics.trajectory_extent(lone, "layer.0", v)


# ------------------------------------------------------------------------------ theta summary
def _set_theta(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.subspace_theta.values():
            p.copy_(torch.randn(p.shape, generator=gen))


def _store(run):
    return StoreBasisSource(run["basis"])


@pytest.mark.parametrize("theta_scale", ["extent", "none"])
def test_theta_summary_of_a_stored_basis_run(run, theta_scale):
    config = SubspaceConfig(ensemble=3, theta_scale=theta_scale)
    model = prepare("intrinsic", make_model("bert", seed=0), config, source=_store(run))
    _set_theta(model, 0)
    summary = diagnostics.theta_summary(model)
    json.dumps(summary)
    assert list(summary) == run["layout"].group_names
    for g, row in summary.items():
        theta = model.subspace_theta[g.replace(".", "_")].detach().double().mean(0).numpy()
        info = run["basis"].layer(g)
        coord = theta * (np.asarray(info.extent) if theta_scale == "extent" else 1.0)
        update = run["basis"].load(g).astype(np.float64) @ coord
        theta0 = np.linalg.norm(run["rows"][0][g].astype(np.float64))
        np.testing.assert_allclose(row["theta_abs"], np.abs(theta), rtol=1e-6)
        np.testing.assert_allclose(row["coord_abs"], np.abs(coord), rtol=1e-6)
        assert row["theta_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-6)
        assert row["update_norm"] == pytest.approx(np.linalg.norm(update), rel=1e-5)
        assert row["theta0_norm"] == pytest.approx(theta0, rel=1e-6)
        assert row["relative_update"] == pytest.approx(np.linalg.norm(update) / theta0, rel=1e-5)


def test_theta_summary_of_a_random_basis_run_and_trained_layernorms(run):
    model = prepare("random", make_model("bert", seed=0), SubspaceConfig(rank=3, ensemble=2))
    _set_theta(model, 1)
    updates = model.updates()
    summary = diagnostics.theta_summary(model)
    for g, row in summary.items():
        assert len(row["theta_abs"]) == 3
        assert row["coord_abs"] == pytest.approx(row["theta_abs"])
        # A random orthonormal V keeps theta's norm.
        assert row["update_norm"] == pytest.approx(row["theta_norm"], rel=1e-5)
        assert row["update_norm"] == pytest.approx(
            float(updates[g].detach().double().norm()), rel=1e-6
        )
    # Fastfood has no per-direction scale (its own `subspace_scale` normalizes rows).
    model = prepare("fastfood", make_model("bert", seed=0), SubspaceConfig(rank=3, ensemble=2))
    _set_theta(model, 2)
    for row in diagnostics.theta_summary(model).values():
        assert row["coord_abs"] == pytest.approx(row["theta_abs"])
    # With LayerNorms training beside theta the base no longer holds theta0...
    config = SubspaceConfig(rank=3, train_parts=("embeddings", "head", "layernorm"))
    model = prepare("random", make_model("bert", seed=0), config)
    row = diagnostics.theta_summary(model)["layer.0"]
    assert row["theta0_norm"] is None and row["relative_update"] is None
    # ...but the trajectory's row 0 does.
    row = diagnostics.theta_summary(model, theta0_rows=run["rows"][0])["layer.0"]
    want = np.linalg.norm(run["rows"][0]["layer.0"].astype(np.float64))
    assert row["theta0_norm"] == pytest.approx(want)
    assert row["relative_update"] == pytest.approx(row["update_norm"] / want)


# ------------------------------------------------------------------------------- the report
def test_diverged_is_ending_below_freeze():
    assert diagnostics.diverged(0.6, 0.7)
    assert not diagnostics.diverged(0.7, 0.7)
    assert not diagnostics.diverged(0.8, 0.7)
    assert diagnostics.diverged(math.nan, 0.7)
    with pytest.raises(InvalidInput):
        diagnostics.diverged(0.8, math.nan)


def test_median_and_mean():
    assert diagnostics.median_and_mean([0.5, 0.9, 0.7, 0.1]) == {
        "median": pytest.approx(0.6),
        "mean": pytest.approx(0.55),
        "n": 4,
        "nonfinite": 0,
    }
    assert diagnostics.median_and_mean([1.0, math.nan]) == {
        "median": 1.0,
        "mean": 1.0,
        "n": 1,
        "nonfinite": 1,
    }
    empty = diagnostics.median_and_mean([])
    assert empty == {"median": None, "mean": None, "n": 0, "nonfinite": 0}
    json.dumps(empty)
