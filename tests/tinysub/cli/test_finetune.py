"""`tinysub finetune`'s flags: `--rank` is the subspace's rank (`--dim` its old name); the
Trainer-only flags need `--engine trainer`."""

from __future__ import annotations

from tinysub.cli.finetune import _rank_or_old_dim
from tinysub.cli.main import run


def test_dim_is_the_old_name_of_rank(capsys):
    assert _rank_or_old_dim(4, None) == 4
    assert _rank_or_old_dim(None, 4) == 4
    assert "--dim is now --rank" in capsys.readouterr().err


def test_rank_and_dim_that_disagree_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--task", "sst2", "--method", "random", "--out", str(out)]
    assert run([*args, "--rank", "3", "--dim", "4"]) == 2
    err = capsys.readouterr().err
    assert "--rank 3 and its old name --dim 4 disagree" in err
    assert not out.exists()


def test_trainer_only_flags_are_refused_under_the_loop_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--task", "sst2", "--method", "random", "--out", str(out)]
    assert run([*args, "--engine", "loop", "--grad-accum", "2", "--precision", "bf16"]) == 2
    assert "grad_accum, precision need engine 'trainer', not 'loop'" in capsys.readouterr().err
    assert run([*args, "--engine", "fast"]) == 2
    assert "engine 'fast' is not one of ['trainer', 'loop']" in capsys.readouterr().err
    assert not out.exists()
    paper = ["experiment", "paper", "--preset", "tiny", "--out", str(out), "--no-progress"]
    assert run([*paper, "--engine", "fast"]) == 2
    assert "engine 'fast' is not one of" in capsys.readouterr().err
    assert not out.exists()
