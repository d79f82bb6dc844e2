"""The engine's stages one at a time: method, plan, solve, project, commit (and the phases they
report through). End-to-end bytes are covered by the other files of this folder."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from storage.basis import MANIFEST, BasisStore, _open_array
from storage.errors import Conflict, InvalidInput, LayoutMismatch
from storage.trajectory import TrajectoryStore
from worker.executors import LocalExecutor
from worker.svd.commit import (
    basis_meta,
    commit,
    discard_on_failure,
    hash_layers,
    inputs_digest,
    layer_spec,
)
from worker.svd.engine import compute_bases
from worker.svd.gram import RCOND, SmallSolve, solve_gram
from worker.svd.method import GramMethod, RandomizedMethod, check_method, method_from_name
from worker.svd.phases import Phases
from worker.svd.plan import GLOBAL_KEY, BasisRequest, make_plan
from worker.svd.project import create_writers, project, project_tasks
from worker.svd.solve import solve, solve_grams
from worker.svd.sources import make_sources

BLOCK = 256  # the tiny store's chunk: layer.0 (1230 columns) has 5 blocks, layer.1 (420) 2


@pytest.fixture
def executor():
    with LocalExecutor(1) as ex:
        yield ex


def plan_for(store, tmp_path, requests=None, **kw):
    """A plan over all checkpoints of the tiny store (rows 1..7, theta0 subtracted)."""
    mode = kw.pop("mode", "delta")
    sources = make_sources([store], [None], mode)
    requests = requests or [BasisRequest(str(tmp_path / "basis"), 3)]
    kw.setdefault("scope", "layer")
    kw.setdefault("method", GramMethod())
    return make_plan(sources, requests, mode=mode, block_cols=BLOCK, **kw)


def x_of(store: TrajectoryStore, group: str) -> np.ndarray:
    """The float64 rows of a delta basis: checkpoints minus theta0."""
    w = store.read_block(group).astype(np.float64)
    return w[1:] - w[0]


def hand_solves(plan, ranks=(2, 3), seed=0):
    """Made-up small solves (one per request, per group), to drive project and commit without
    pass 1."""
    rng = np.random.default_rng(seed)
    out = []
    for r in ranks:
        per = {}
        for g in plan.groups:
            s = np.sort(rng.uniform(1, 2, r))[::-1]
            per[g] = SmallSolve(
                m=rng.standard_normal((plan.n, r)),
                singular_values=s,
                energy=s**2 / 10,
                total_energy=10.0,
                requested_rank=r,
                extent=None if g == "layer.1" else s / 2,
            )
        out.append(per)
    return out


# --------------------------------------------------------------------------- method
def test_methods_carry_their_parameters_and_refuse_bad_ones():
    assert GramMethod().passes == 2 and GramMethod().params() == {}
    rand = RandomizedMethod(oversample=4, power_iters=3, seed=9)
    assert rand.passes == 6 and rand.params() == {"oversample": 4, "power_iters": 3, "seed": 9}
    assert rand.sketch.oversample == 4 and rand.name == "randomized"
    assert GramMethod.factored and not RandomizedMethod.factored
    with pytest.raises(AttributeError):
        rand.seed = 1  # frozen: a method is a value
    assert method_from_name("randomized", seed=9, power_iters=3, oversample=4) == rand
    assert method_from_name("gram") == GramMethod()
    for bad in ({"oversample": -1}, {"power_iters": 1.5}, {"seed": True}):
        with pytest.raises(InvalidInput, match="must be a non-negative integer"):
            RandomizedMethod(**bad)
    with pytest.raises(InvalidInput, match="is not one of"):
        method_from_name("lanczos")
    with pytest.raises(InvalidInput, match="does not take"):
        method_from_name("randomized", blocks=3)
    with pytest.raises(InvalidInput, match="GramMethod"):
        check_method("randomized")  # a bare name would lose its parameters


# --------------------------------------------------------------------------- phases
def test_phases_count_ticks_and_time_only_what_succeeded():
    seen = []
    phases = Phases(lambda *a: seen.append(a))
    tick = phases.tick("gram", 3)
    tick(1)
    tick(2)
    assert seen == [("gram", 1, 3), ("gram", 3, 3)]
    Phases().tick("quiet", 1)(1)  # no progress callback: nothing to call
    with phases.timed("a"):
        pass
    with pytest.raises(RuntimeError), phases.timed("b"):
        raise RuntimeError
    assert list(phases.seconds) == ["a"] and phases.seconds["a"] >= 0


# --------------------------------------------------------------------------- plan
def test_plan_lays_out_the_union_of_rows_and_every_block(tiny_store, tmp_path):
    plan = plan_for(tiny_store, tmp_path)
    assert plan.n == 7 and plan.groups == ("layer.0", "layer.1")
    assert [(b.group, b.start, b.stop) for b in plan.blocks] == [
        ("layer.0", 0, 256),
        ("layer.0", 256, 512),
        ("layer.0", 512, 768),
        ("layer.0", 768, 1024),
        ("layer.0", 1024, 1230),
        ("layer.1", 0, 256),
        ("layer.1", 256, 420),
    ]
    assert not plan.augmented and not any(b.augment for b in plan.blocks)
    assert plan.rcond == RCOND["delta"] and plan.reduction_key("layer.1") == "layer.1"
    # 2 passes x float32 x (7 checkpoints + theta0) x all columns
    assert plan.bytes_read == 2 * 4 * 8 * 1650

    raw = plan_for(
        tiny_store,
        tmp_path,
        mode="raw",
        scope="global",
        groups=["layer.1"],
        method=RandomizedMethod(power_iters=1),
    )
    assert raw.groups == ("layer.1",) and all(b.augment for b in raw.blocks)
    assert raw.n == 7  # theta0 is the shift row, not one of the n rows
    assert raw.reduction_key("layer.1") == GLOBAL_KEY
    assert raw.rcond == RCOND["delta"]  # the randomized route never forms the raw factor
    assert raw.bytes_read == 4 * 4 * 8 * 420  # sketch, one power step, Rayleigh-Ritz, project


def test_plan_refuses_bad_requests_before_anything_is_written(tiny_store, tmp_path):
    out = str(tmp_path / "basis")
    cases = [
        ({"scope": "model"}, InvalidInput, "scope 'model'"),
        ({"mode": "log"}, InvalidInput, "mode 'log'"),
        ({"method": "randomized"}, InvalidInput, "GramMethod"),
        ({"rcond": 1.5}, InvalidInput, "rcond"),
        ({"groups": ["layer.9"]}, LayoutMismatch, "no group 'layer.9'"),
        ({"requests": [BasisRequest(out, 8)]}, InvalidInput, "spans 7 rows but rank 8"),
        ({"requests": [BasisRequest(out, 3, [0, 3])]}, InvalidInput, "spans 2 rows"),
        ({"requests": [BasisRequest(out, 1), BasisRequest(out, 2)]}, InvalidInput, "two bases"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            plan_for(tiny_store, tmp_path, **kw)
    with pytest.raises(InvalidInput, match="nothing to compute"):
        make_plan(
            [],
            [BasisRequest(out, 1)],
            mode="delta",
            scope="layer",
            method=GramMethod(),
            block_cols=1,
        )
    assert not (tmp_path / "basis").exists()
    compute_bases(make_sources([tiny_store], [None], "delta"), [BasisRequest(out, 2)])
    with pytest.raises(Conflict, match="overwrite=True"):
        plan_for(tiny_store, tmp_path)
    assert plan_for(tiny_store, tmp_path, overwrite=True).n == 7


# --------------------------------------------------------------------------- solve
def test_gram_solves_are_sub_blocks_of_each_groups_gram(tiny_store, tmp_path):
    reqs = [
        BasisRequest(str(tmp_path / "all"), 3),
        BasisRequest(str(tmp_path / "some"), 2, [1, 2, 5, 6]),
    ]
    grams = {g: x_of(tiny_store, g) @ x_of(tiny_store, g).T for g in ("layer.0", "layer.1")}
    plan = plan_for(tiny_store, tmp_path, requests=reqs)
    solves = solve_grams(plan, grams)
    for req, per in zip(reqs, solves, strict=True):
        for g, sol in per.items():
            members = None if req.members is None else np.asarray(req.members)
            ref = solve_gram(grams[g], req.rank, mode="delta", members=members, rcond=plan.rcond)
            np.testing.assert_array_equal(sol.m, ref.m)
            assert sol.requested_rank == req.rank
    glob = solve_grams(plan_for(tiny_store, tmp_path, requests=reqs, scope="global"), grams)
    ref = solve_gram(grams["layer.0"] + grams["layer.1"], 2, mode="delta", members=[1, 2, 5, 6])
    for sol in glob[1].values():  # every layer takes its slice of the one global solve
        np.testing.assert_array_equal(sol.m, ref.m)
        np.testing.assert_array_equal(sol.singular_values, ref.singular_values)
        assert sol.requested_rank == 2


@pytest.mark.parametrize("method", [GramMethod(), RandomizedMethod(power_iters=1)])
def test_pass_one_reads_every_block_and_gives_the_spectrum(tiny_store, tmp_path, method, executor):
    seen = []
    phases = Phases(lambda phase, done, total: seen.append((phase, done, total)))
    plan = plan_for(tiny_store, tmp_path, method=method)
    (per,) = solve(plan, executor, phases)
    for g, sol in per.items():
        s_ref = np.linalg.svd(x_of(tiny_store, g), compute_uv=False)[:3]
        # l = k + 10 covers all 7 rows, so the randomized spectrum is exact too.
        np.testing.assert_allclose(sol.singular_values, s_ref, rtol=1e-9)
    finished = [phase for phase, done, total in seen if done == total == 7]
    if isinstance(method, GramMethod):
        assert finished == ["gram"] and list(phases.seconds) == ["gram", "eigh"]
    else:
        assert finished == ["sketch", "power 1", "rayleigh"]
        assert list(phases.seconds) == ["randomized"]


# --------------------------------------------------------------------------- project
def test_project_writes_v_of_every_basis_from_one_product_per_block(tiny_store, tmp_path, executor):
    reqs = [BasisRequest(str(tmp_path / "a"), 2), BasisRequest(str(tmp_path / "b"), 3)]
    plan = plan_for(tiny_store, tmp_path, requests=reqs)
    solves = hand_solves(plan)
    writers = create_writers(plan, solves, overwrite=False)
    assert [w.shapes for w in writers] == [
        {"layer.0": (1230, 2), "layer.1": (420, 2)},
        {"layer.0": (1230, 3), "layer.1": (420, 3)},
    ]
    tasks = project_tasks(plan, solves, writers)
    assert [t.block for t in tasks] == list(plan.blocks)
    for t in tasks:
        assert t.m.shape == (7, 5)  # both bases side by side
        assert [(o.url, o.col0, o.rank) for o in t.outputs] == [
            (writers[0].url, 0, 2),
            (writers[1].url, 2, 3),
        ]
    phases = Phases()
    project(plan, solves, writers, executor, phases)
    assert list(phases.seconds) == ["project"]
    for w, per in zip(writers, solves, strict=True):
        for g in plan.groups:
            v = _open_array(w.loc, g, read_only=True)[:]
            np.testing.assert_allclose(v, x_of(tiny_store, g).T @ per[g].m, rtol=1e-5, atol=1e-6)


def test_writers_made_before_a_failing_one_are_removed(tiny_store, tmp_path):
    done = str(tmp_path / "done")
    compute_bases(make_sources([tiny_store], [None], "delta"), [BasisRequest(done, 2)])
    reqs = [BasisRequest(str(tmp_path / "new"), 2), BasisRequest(done, 3)]
    plan = plan_for(tiny_store, tmp_path, requests=reqs, overwrite=True)
    with pytest.raises(Conflict):  # the basis appeared at "done" after planning
        create_writers(plan, hand_solves(plan), overwrite=False)
    assert not (tmp_path / "new").exists()
    assert BasisStore.open(done).layer("layer.0").rank == 2  # a finished basis is left alone


# --------------------------------------------------------------------------- commit
def test_commit_hashes_the_stored_bytes_and_writes_the_typed_manifest(
    tiny_store, tmp_path, executor
):
    reqs = [
        BasisRequest(str(tmp_path / "a"), 2, [0, 1, 2], "zeroshot", {"held_out": "x"}),
        BasisRequest(str(tmp_path / "b"), 3, kind="unified", meta={"kind": "renamed"}),
    ]
    plan = plan_for(tiny_store, tmp_path, requests=reqs, method=RandomizedMethod(seed=5))
    solves = hand_solves(plan)
    writers = create_writers(plan, solves, overwrite=False)
    rng = np.random.default_rng(1)
    written = {}
    for w in writers:  # stand-in for pass 2
        for g, (rows, rank) in w.shapes.items():
            written[w.url, g] = rng.standard_normal((rows, rank)).astype(np.float32)
            _open_array(w.loc, g, read_only=False)[:] = written[w.url, g]
    phases = Phases()
    shas = hash_layers(plan, writers, executor, phases)
    assert shas == {key: hashlib.sha256(v.tobytes()).hexdigest() for key, v in written.items()}
    bases = commit(plan, solves, writers, executor, Phases())
    assert list(phases.seconds) == ["hash"]
    a = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert set(a) == set(basis_meta(plan, reqs[0])) | {"held_out", "format", "created_at", "layers"}
    assert a["method"] == "randomized" and a["method_params"]["seed"] == 5
    assert a["members"] == [0, 1, 2] and a["kind"] == "zeroshot" and a["held_out"] == "x"
    assert a["inputs_digest"] == inputs_digest(plan.sources, [0, 1, 2], "delta", "layer")
    assert a["sources"] == [
        {"url": tiny_store.url, "label": tiny_store.url, "rows": list(range(1, 8)), "ref_row": 0}
    ]
    assert bases[1].manifest["kind"] == "renamed"  # the request's own meta goes last
    for layer in a["layers"]:
        assert layer["sha256"] == shas[writers[0].url, layer["name"]]
        assert ("extent" in layer) == (layer["name"] == "layer.0")
    np.testing.assert_array_equal(bases[0].load("layer.1"), written[writers[0].url, "layer.1"])


def test_layer_spec_records_extent_only_where_measured():
    sol = SmallSolve(np.zeros((3, 1)), np.array([2.0]), np.array([0.5]), 8.0, 1)
    assert layer_spec(sol, "ab") == {
        "singular_values": [2.0],
        "energy": [0.5],
        "total_energy": 8.0,
        "sha256": "ab",
    }
    sol.extent = np.array([0.25])
    assert layer_spec(sol, "ab")["extent"] == [0.25]


def test_a_failure_removes_uncommitted_bases_only(tiny_store, tmp_path, executor):
    reqs = [BasisRequest(str(tmp_path / "a"), 2), BasisRequest(str(tmp_path / "b"), 3)]
    plan = plan_for(tiny_store, tmp_path, requests=reqs)
    solves = hand_solves(plan)
    writers = create_writers(plan, solves, overwrite=False)
    with pytest.raises(KeyboardInterrupt), discard_on_failure(writers):
        project(plan, solves, writers, executor, Phases())
        writers[0].commit({g: layer_spec(solves[0][g], "") for g in plan.groups}, {})
        raise KeyboardInterrupt  # interrupted before the second basis committed
    assert BasisStore.exists(writers[0].url)
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()
