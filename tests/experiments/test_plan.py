"""The plan: one job per distinct run, shared between the tables that need it."""

from __future__ import annotations

from pathlib import Path

from experiments.config import preset
from experiments.plan import Paths, Planner

# What phase tune would have chosen (experiments/tune.py); the plan reads them.
CHOSEN = {"lr": 1e-4, "head_lr": 3e-3, "theta_lr": 0.2, "plain_theta_lr": 0.05}


def planner(tmp_path, name="default"):
    return Planner(preset(name), Paths(Path(tmp_path)), CHOSEN)


def test_a_setting_left_to_tuning_is_refused_until_chosen(tmp_path):
    import pytest

    from storage.errors import InvalidInput

    with pytest.raises(InvalidInput, match="lr is not chosen yet"):
        Planner(preset("default"), Paths(Path(tmp_path))).table1()


def test_ids_are_unique_and_name_the_run(tmp_path):
    p = planner(tmp_path)
    jobs = p.table1() + p.transfer() + p.unified() + p.ablation() + p.scope(6) + p.modes()
    by_id = {}
    for job in jobs:
        if job.id in by_id:  # a shared run must be the same run
            assert by_id[job.id].spec == job.spec
        by_id[job.id] = job
    assert "intrinsic/trec6/delta/d32/s1" in by_id
    # intrinsic at dim 16 serves Tables 5/6 and the modes comparison: trained once
    assert sum(j.id == "intrinsic/trec6/delta/d16/s0" for j in jobs) == 2
    assert len({j.spec.out for j in by_id.values()}) == len(by_id)


def test_table1_counts(tmp_path):
    cfg = preset("default")
    jobs = planner(tmp_path).table1()
    # full, freeze, random, intrinsic per seed: the trajectory is a run of its own (issue 11)
    assert len(jobs) == 4 * len(cfg.seeds) * len(cfg.tasks)
    assert all(j.spec.save_model for j in jobs if j.spec.method == "full")
    assert {j.spec.subspace.rank for j in jobs if j.spec.method in ("random", "intrinsic")} == {32}


def test_transfer_never_uses_the_own_basis(tmp_path):
    cfg = preset("default")
    jobs = planner(tmp_path).transfer()
    assert len(jobs) == len(cfg.tasks) * (len(cfg.tasks) - 1) * len(cfg.seeds)
    for job in jobs:
        source = job.meta["basis_from"]
        assert source != job.spec.task
        assert job.spec.basis.endswith(f"bases/{source}/delta")


def test_global_and_layerwise_have_equal_free_parameters(tmp_path):
    cfg = preset("default")
    jobs = planner(tmp_path).scope(layers=6)
    glob = [j for j in jobs if j.spec.method == "global"]
    layer = [j for j in jobs if j.spec.method == "intrinsic"]
    assert {j.spec.subspace.rank for j in glob} == {cfg.equal_layer_dim * 6}
    assert {j.spec.subspace.rank for j in layer} == {cfg.equal_layer_dim}
    assert all(j.spec.subspace.scope == "global" for j in glob)


def test_disabling_reads_the_outliers_of_the_same_seeds_paper_protocol_run(tmp_path):
    """Table 3 as the paper ran it: the outliers of intrinsic fine-tuning in the raw basis under
    plain V theta at the paper's lr, trained by an earlier phase (modes)."""
    p = planner(tmp_path)
    intrinsic = {j.id: j for j in p.modes() if j.spec.method == "intrinsic"}
    for job in p.disable():
        assert job.spec.method == "full"
        source = intrinsic[job.meta["disabled_from"]]
        assert job.spec.hold_zero_from == source.spec.out
        assert source.spec.train.seed == job.spec.train.seed
        assert source.meta["mode"] == "raw" and source.spec.basis.endswith("raw")
        sub = source.spec.subspace
        assert (sub.theta_scale, sub.theta_lr, sub.rank) == ("none", 0.01, p.cfg.dim)
    modes = {j.spec.hold_zero_mode for j in p.disable()}
    assert modes == {"outlier", "random", "outlier_non_ln", "outlier_ln", "random_matched"}


def test_trajectory_runs_record_t_rows(tmp_path):
    cfg = preset("default")
    jobs = planner(tmp_path).trajectories()
    assert all(j.spec.record_every * cfg.rows == j.spec.train.max_steps for j in jobs)
    assert all(j.spec.train.max_steps == cfg.trajectory_steps > cfg.steps for j in jobs)
    # recorded once per task with a seed that no table evaluates
    assert all(j.spec.train.seed == cfg.tune_seed not in cfg.seeds for j in jobs)
    assert all(j.spec.save_model for j in jobs)  # the oracle curve needs the final model


def test_d90_points(tmp_path):
    p = planner(tmp_path)
    said = p.d90_point("trec6", "said", 256, 0)
    assert said.spec.method == "fastfood" and said.spec.subspace.said
    assert said.spec.subspace.scope == "global" and said.id.startswith("fastfood+said/")
    assert p.d90_point("trec6", "intrinsic", 16, 0).id == "intrinsic/trec6/delta/d16/s0"


def test_the_paper_theta_lr_runs_are_their_own_runs(tmp_path):
    p = planner(tmp_path)
    table1 = {j.id for j in p.table1()}
    check = p.theta_lr()
    assert all(j.id not in table1 for j in check)
    # The paper's rule (plain V theta at 0.01) beside the default rule (theta in the
    # trajectory's units); generated bases always train plain V theta.
    assert {(j.spec.subspace.theta_scale, j.spec.subspace.theta_lr) for j in check} == {
        ("none", 0.01)
    }
    by_method = {
        j.spec.method: (j.spec.subspace.theta_scale, j.spec.subspace.theta_lr)
        for j in p.table1()
        if j.spec.subspace.rank
    }
    assert by_method == {"intrinsic": ("extent", 0.2), "random": ("none", 0.05)}
    # and every run's head trains at its own lr
    assert {j.spec.train.head_lr for j in p.table1()} == {3e-3}


def test_the_first_searches_can_be_planned_before_anything_is_chosen(tmp_path):
    """head_lr is searched with lr at the middle of its grid; lr then with the chosen head_lr."""
    fresh = Planner(preset("default"), Paths(Path(tmp_path)))
    head = fresh.tune("head_lr", 1e-2)
    assert {(j.spec.method, j.spec.train.head_lr, j.spec.train.lr) for j in head} == {
        ("freeze", 1e-2, 1e-4)
    }
    assert all(j.spec.eval_split == "tune" and j.spec.train.seed == 100 for j in head)
    fresh.lrs["head_lr"] = 3e-3
    lr = fresh.tune("lr", 2e-4)
    assert {(j.spec.method, j.spec.train.head_lr, j.spec.train.lr) for j in lr} == {
        ("full", 3e-3, 2e-4)
    }
    assert {j.spec.subspace.theta_lr for j in fresh.tune("plain_theta_lr", 0.2)} == {0.2}
