"""The scheduler commits each finished run, skips committed ones and honours the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import scheduler as sched
from experiments.config import preset
from experiments.d90 import D90Search
from experiments.ledger import Ledger
from experiments.plan import Paths, Planner
from tests.experiments.test_plan import CHOSEN


@pytest.fixture
def fake_execute(monkeypatch):
    """Replace training with a record whose score grows with dim; count the calls."""
    calls = []

    def execute(job):
        calls.append(job.id)
        for product in job.products:  # the files a real run leaves for later phases
            Path(product).parent.mkdir(parents=True, exist_ok=True)
            Path(product).touch()
        dim = job.spec.subspace.rank or 0
        return {
            "id": job.id,
            "phase": job.phase,
            "task": job.spec.task,
            "method": job.spec.method,
            "seed": job.spec.train.seed,
            "dim": dim,
            "metric": "accuracy",
            "score": min(1.0, dim / 20),
            "seconds": 1.0,
        }

    monkeypatch.setattr(sched, "execute", execute)
    return calls


def jobs(tmp_path):
    return Planner(preset("tiny"), Paths(Path(tmp_path)), CHOSEN).table1()


def test_runs_every_job_once(tmp_path, fake_execute):
    ledger = Ledger(tmp_path)
    todo = jobs(tmp_path)
    with sched.Scheduler(ledger) as s:
        records = s.run("table1", todo + todo[:2])  # duplicates are one run
    assert len(fake_execute) == len(todo) == len(records) == len(Ledger(tmp_path))
    with sched.Scheduler(Ledger(tmp_path)) as s:
        s.run("table1", todo)
    assert len(fake_execute) == len(todo)  # nothing trained twice


def test_a_committed_run_whose_products_are_gone_runs_again(tmp_path, fake_execute):
    todo = jobs(tmp_path)
    kept = [j for j in todo if j.products]
    assert kept, "table1 keeps the full models for Table 3's post-hoc zeroing"
    with sched.Scheduler(Ledger(tmp_path)) as s:
        s.run("table1", todo)
    Path(kept[0].products[0]).unlink()  # work/ is not committed: a fresh clone has none of it
    with sched.Scheduler(Ledger(tmp_path)) as s:
        s.run("table1", todo)
    assert fake_execute.count(kept[0].id) == 2
    assert len(fake_execute) == len(todo) + 1
    assert len(Ledger(tmp_path)) == len(todo)  # the rerun's record replaces the old one


def test_budget_stops_starting_runs_and_resume_finishes(tmp_path, fake_execute, monkeypatch):
    todo = jobs(tmp_path)
    budget = iter([False, False, False])
    monkeypatch.setattr(sched.Scheduler, "out_of_time", lambda self: next(budget, True))
    with (
        pytest.raises(sched.BudgetSpent, match="run the same command again"),
        sched.Scheduler(Ledger(tmp_path)) as s,
    ):
        s.run("table1", todo)
    assert len(Ledger(tmp_path)) == 3
    monkeypatch.setattr(sched.Scheduler, "out_of_time", lambda self: False)
    with sched.Scheduler(Ledger(tmp_path)) as s:
        s.run("table1", todo)
    assert len(Ledger(tmp_path)) == len(todo) == len(fake_execute)


def test_a_failed_run_stops_without_losing_committed_ones(tmp_path, fake_execute, monkeypatch):
    todo = jobs(tmp_path)
    good = sched.execute

    def flaky(job):
        if job.id == todo[2].id:
            raise RuntimeError("out of memory")
        return good(job)

    monkeypatch.setattr(sched, "execute", flaky)
    with pytest.raises(RuntimeError), sched.Scheduler(Ledger(tmp_path)) as s:
        s.run("table1", todo)
    assert set(Ledger(tmp_path).records) == {j.id for j in todo[:2]}


def test_searches_run_side_by_side_and_reuse_the_ledger(tmp_path, fake_execute):
    planner = Planner(preset("tiny"), Paths(Path(tmp_path)), CHOSEN)
    ledger = Ledger(tmp_path)
    known = planner.d90_point("trec6", "intrinsic", 4, 0)
    ledger.append({"id": known.id, "score": 0.2, "seconds": 1.0, "phase": "ablation"})
    searches = [
        D90Search("trec6", "intrinsic", [1, 4, 16], [0], target=0.09, refine=0),
        D90Search("trec6", "fastfood", [4, 16], [0], target=0.5, refine=0),
    ]
    with sched.Scheduler(ledger) as s:
        s.search("d90", searches, lambda x, d, seed: planner.d90_point(x.task, x.method, d, seed))
    assert searches[0].d90() == 4  # the ledger's 0.2 passes, 1/20 fails
    assert searches[1].d90() == 16
    assert known.id not in fake_execute  # d = 4 came from the ledger
    assert planner.d90_point("trec6", "intrinsic", 1, 0).id in fake_execute
