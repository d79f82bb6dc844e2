import numpy as np
import pytest
import torch

from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import layout_from_model
from tests.worker.finetune.conftest import make_batch, make_model
from tests.worker.finetune.helpers import task_basis_for
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.reparam import SubspaceModel, parameter_parts
from worker.finetune.sources import RandomBasisSource, StoreBasisSource, check_reference


def _logits(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


@pytest.mark.parametrize("method", ["random", "fastfood"])
@pytest.mark.parametrize(("scope", "dtype"), [("layer", "float32"), ("global", "float16")])
def test_theta_zero_gives_the_base_model(arch, method, scope, dtype):
    base = make_model(arch).eval()
    batch = make_batch()
    want = _logits(base, batch)
    cfg = SubspaceConfig(init="zeros", rank=5, scope=scope, basis_dtype=dtype)
    wrapped = prepare(method, base, cfg).eval()
    assert torch.equal(_logits(wrapped, batch), want)


def test_theta_zero_with_a_stored_basis(arch, tmp_path):
    basis = task_basis_for(lambda: make_model(arch, seed=1), tmp_path, k=3)
    base = make_model(arch).eval()
    want = _logits(base, make_batch())
    source = StoreBasisSource(basis)
    wrapped = prepare("intrinsic", base, SubspaceConfig(init="zeros"), source=source).eval()
    assert torch.equal(_logits(wrapped, make_batch()), want)
    # The paper's random init moves the model off theta0, but only inside span(V).
    wrapped = prepare("intrinsic", base, SubspaceConfig(init="random", init_std=0.5), source=source)
    for g, u in wrapped.updates().items():
        v = torch.from_numpy(basis.load(g))
        resid = u - v @ (v.T @ u)
        assert resid.norm() < 1e-5 * max(1.0, u.norm())


@pytest.mark.parametrize("rule", ["extent", "none"])
def test_update_is_v_times_the_ensemble_mean(tmp_path, rule):
    """V diag(extent) mean(theta) under the default rule, the paper's V mean(theta) with none."""
    basis = task_basis_for(lambda: make_model("bert", seed=1), tmp_path, k=4)
    cfg = SubspaceConfig(ensemble=5, theta_scale=rule)
    wrapped = prepare("intrinsic", make_model("bert"), cfg, source=StoreBasisSource(basis))
    assert wrapped.subspace_reference["theta_scale"] == rule
    for g, u in wrapped.updates().items():
        theta = wrapped.subspace_theta[g.replace(".", "_")]
        assert theta.shape == (5, 4)
        v = torch.from_numpy(basis.load(g))
        extent = torch.tensor(basis.layer(g).extent, dtype=torch.float32)
        scale = extent if rule == "extent" else torch.ones(4)
        want = v @ (scale * theta.detach().mean(0))
        torch.testing.assert_close(u, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("mode", ["delta", "raw", "centered"])
def test_the_recorded_extent_is_the_trajectory_motion_along_each_direction(tmp_path, mode):
    """extent_k = RMS over the basis' rows of their motion along v_k: from theta0 (delta, raw;
    in raw mode v_1 is theta0's own direction, yet the extent is the motion's) or from their
    mean (centered, PCA). In delta mode it is sigma_k / sqrt(t), and theta = sqrt(t) u_i (order
    1) reaches checkpoint i exactly: theta is in the trajectory's own units."""
    from tests.worker.finetune.helpers import record_trajectory
    from worker.svd.bases import task_basis

    traj = record_trajectory(make_model("bert", seed=1), str(tmp_path / "traj"), steps=4)
    k = 3 if mode == "centered" else 4  # centring 4 rows leaves rank 3
    out = str(tmp_path / "b")
    basis = StoreBasisSource.open(task_basis(traj.url, out, k, mode=mode).bases[0].url).store
    for g in basis.layer_names:
        rows = np.stack([traj.read_row(i, g) for i in range(traj.num_rows)]).astype(np.float64)
        motion = rows[1:] - (rows[1:].mean(0) if mode == "centered" else rows[0])
        v = basis.load(g).astype(np.float64)
        coords = motion @ v  # (t, k)
        want = np.sqrt(np.mean(coords**2, axis=0))
        np.testing.assert_allclose(basis.layer(g).extent, want, rtol=1e-4)
        if mode == "delta":
            sigma = np.asarray(basis.layer(g).singular_values)
            np.testing.assert_allclose(basis.layer(g).extent, sigma / 2.0, rtol=1e-6)
            u = coords / sigma  # (t, k): the left singular vectors
            np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-4)
            step = (v * want) @ (2.0 * u[-1])  # theta = sqrt(t) u_t
            np.testing.assert_allclose(step, motion[-1], atol=1e-5 * np.abs(motion).max())


def test_global_scope_shares_one_theta(tmp_path):
    basis = task_basis_for(lambda: make_model("bert", seed=1), tmp_path, k=3, scope="global")
    wrapped = prepare(
        "global", make_model("bert"), SubspaceConfig(), source=StoreBasisSource(basis)
    )
    assert list(wrapped.subspace_theta) == ["encoder"]
    theta = wrapped.subspace_theta["encoder"].detach().mean(0)
    stacked = np.concatenate([basis.load(g) for g in basis.layer_names])
    np.testing.assert_allclose(stacked.T @ stacked, np.eye(3), atol=1e-5)  # one global basis
    # The global extent (recorded with every layer) scales the one shared theta.
    extent = torch.tensor(basis.layer(basis.layer_names[0]).extent, dtype=torch.float32)
    for g, u in wrapped.updates().items():
        want = torch.from_numpy(basis.load(g)) @ (extent * theta)
        torch.testing.assert_close(u, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize(
    "parts",
    [("embeddings", "head"), (), ("head", "layernorm"), ("embeddings", "head", "encoder_other")],
)
def test_only_the_intended_tensors_receive_gradients(arch, parts):
    base = make_model(arch)
    layout = layout_from_model(base)
    kinds = parameter_parts(base, layout)
    wrapped = prepare("random", base, SubspaceConfig(rank=4, train_parts=parts))
    wrapped(**make_batch()).loss.backward()
    got = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    want = {f"base.{n}" for n, part in kinds.items() if part in parts}
    want |= {f"subspace_theta.{g.replace('.', '_')}" for g in layout.group_names}
    assert got == want
    for n, p in wrapped.named_parameters():
        assert p.requires_grad == (n in want), n
    # V is a buffer, never a parameter, and is left out of the state dict (theta refers to it).
    assert not any("subspace_basis" in n for n, _ in wrapped.named_parameters())
    assert not any("subspace_basis" in k for k in wrapped.state_dict())


def test_one_product_per_layer_per_forward(arch):
    wrapped = prepare("random", make_model(arch), SubspaceConfig(rank=3))
    calls = []
    for name, proj in wrapped.subspace_projections.items():
        proj.register_forward_hook(lambda *_a, name=name: calls.append(name))
    wrapped(**make_batch()).loss.backward()
    assert sorted(calls) == sorted(wrapped.subspace_projections)


def _train_steps(model, steps=5, lr=0.05):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = make_batch()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()


@pytest.mark.parametrize("method", ["random", "fastfood"])
def test_merge_equals_the_wrapped_forward_and_saves(arch, method, tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = make_model(arch)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    layout = layout_from_model(base)
    wrapped = prepare(method, base, SubspaceConfig(rank=4, said=method == "fastfood"))
    _train_steps(wrapped)
    wrapped.eval()
    merged = wrapped.merge().eval()
    batch = make_batch(seed=3)
    out = _logits(wrapped, batch)
    torch.testing.assert_close(_logits(merged, batch), out, atol=1e-5, rtol=1e-5)
    # The encoder weights really moved, and the base module's own encoder weights did not.
    encoder = {n for g in layout.groups for n in g.full_names()}
    moved = [
        n for n, p in merged.named_parameters() if n in encoder and not torch.equal(p, frozen[n])
    ]
    assert len(moved) == len(encoder)
    for n in encoder:
        assert torch.equal(base.get_parameter(n), frozen[n])
    merged.save_pretrained(tmp_path / "m")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(_logits(again, batch), out, atol=1e-5, rtol=1e-5)


def test_saved_theta_reloads_against_the_same_basis_only(tmp_path):
    base = make_model("roberta")
    wrapped = prepare("random", base, SubspaceConfig(rank=4, basis_seed=7))
    _train_steps(wrapped)
    wrapped.eval()
    wrapped.save_subspace(tmp_path / "run")
    want = _logits(wrapped, make_batch())

    fresh = prepare("random", make_model("roberta"), SubspaceConfig(rank=4, basis_seed=7)).eval()
    fresh.load_subspace_state(tmp_path / "run")
    torch.testing.assert_close(_logits(fresh, make_batch()), want, atol=1e-6, rtol=0)

    import json

    saved = json.loads((tmp_path / "run" / "subspace.json").read_text())
    assert saved["basis"]["kind"] == "random" and len(saved["basis"]["layers"]) == 2
    layout = layout_from_model(make_model("roberta"))
    check_reference(RandomBasisSource(layout, 4, seed=7), saved["basis"])
    with pytest.raises(InvalidInput, match="sha256"):
        check_reference(RandomBasisSource(layout, 4, seed=8), saved["basis"])


def test_a_basis_of_another_model_is_refused(tmp_path):
    basis = task_basis_for(lambda: make_model("bert", seed=1), tmp_path, k=3)
    with pytest.raises(LayoutMismatch):
        prepare("intrinsic", make_model("mpnet"), SubspaceConfig(), source=StoreBasisSource(basis))


def test_projections_must_cover_the_layout():
    base = make_model("bert")
    layout = layout_from_model(base)
    with pytest.raises(LayoutMismatch):
        SubspaceModel(base, layout, {}, SubspaceConfig(), {})


def test_float16_basis_changes_outputs_by_rounding_only(arch):
    """V in float16 with float32 products: the update differs from float32 V by V's rounding
    (relative 2^-11 per entry); outputs move far less than the update itself."""
    torch.manual_seed(0)
    out, upd = {}, {}
    for dtype in ("float32", "float16"):
        wrapped = prepare(
            "random", make_model(arch), SubspaceConfig(rank=6, init_std=1.0, basis_dtype=dtype)
        ).eval()
        out[dtype] = _logits(wrapped, make_batch())
        upd[dtype] = torch.cat(list(wrapped.updates().values())).detach()
    rel_update = ((upd["float16"] - upd["float32"]).norm() / upd["float32"].norm()).item()
    rel_out = ((out["float16"] - out["float32"]).abs().max() / out["float32"].abs().max()).item()
    assert 0 < rel_update < 1e-3
    assert rel_out < 1e-3


def test_the_ensemble_trains_like_one_vector_started_at_its_mean():
    """Adam gives every member the same update, so h random vectors behave as their mean."""
    batch = make_batch()
    wide = prepare(
        "random",
        make_model("bert"),
        SubspaceConfig(rank=4, ensemble=8, init_std=0.3, train_parts=()),
    )
    one = prepare("random", make_model("bert"), SubspaceConfig(rank=4, ensemble=1, train_parts=()))
    with torch.no_grad():
        for k, p in one.subspace_theta.items():
            p.copy_(wide.subspace_theta[k].mean(0, keepdim=True))
    for model in (wide, one):
        opt = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad], lr=0.05, eps=1e-12
        )
        for _ in range(4):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
    for g in wide.layout.group_names:
        torch.testing.assert_close(wide.theta(g), one.theta(g), atol=1e-5, rtol=1e-5)
