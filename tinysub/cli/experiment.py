"""`tinysub experiment paper | d90 | report`: the paper reproduction (experiments/)."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from experiments.config import preset as load_preset
from tinysub.cli.common import console, err_console, phase_progress

app = typer.Typer(
    help="Reproduce the papers' findings end to end: trajectories, bases, subspace runs, report.",
    no_args_is_help=True,
)

Out = Annotated[Path, typer.Option("--out", help="Experiment folder (resumes if it exists).")]
Preset = Annotated[
    str, typer.Option(help="default (3 seeds, within 3 h on 2 cores) | quick | tiny (CI).")
]
Quick = Annotated[bool, typer.Option("--quick", help="Same as --preset quick (within 15 min).")]
Budget = Annotated[
    float | None,
    typer.Option(help="Minutes after which no new run starts; rerun to resume."),
]
Workers = Annotated[
    int | None, typer.Option(help="Training processes side by side (default: the preset's).")
]
Work = Annotated[
    Path | None,
    typer.Option(help="Where trajectories, bases and run folders go (default OUT/work)."),
]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
Engine = Annotated[
    str,
    typer.Option(help="loop (tinysub's own loop, as the committed ledger) | trainer (HF Trainer)."),
]


def _config(preset: str, quick: bool, workers: int | None, engine: str = "loop"):
    cfg = load_preset("quick" if quick else preset).replace(engine=engine)
    return cfg.replace(workers=workers) if workers else cfg


def _command(
    out: Path, preset: str, quick: bool, workers: int | None, work: Path | None, engine: str
) -> str:
    """The command that reproduces this experiment (budget and progress do not change it)."""
    parts = ["tinysub", "experiment", "paper", "--out", str(out)]
    if quick:
        parts.append("--quick")
    elif preset != "default":
        parts += ["--preset", preset]
    if workers:
        parts += ["--workers", str(workers)]
    if work:
        parts += ["--work", str(work)]
    if engine != "loop":
        parts += ["--engine", engine]
    return shlex.join(parts)


@contextlib.contextmanager
def _stops_on_budget(out: Path) -> Iterator[None]:
    """A spent budget is a clean stop (exit code 3) that says how to resume."""
    from experiments.scheduler import BudgetSpent  # noqa: PLC0415 - imports torch: CLI start-up

    try:
        yield
    except BudgetSpent as exc:
        err_console.print(f"[yellow]stopped:[/yellow] {exc}")
        if (out / "report.md").exists():
            console.print(f"partial report: {out / 'report.md'}")
        raise typer.Exit(3) from None


def _quiet() -> None:
    import transformers  # noqa: PLC0415 - optional, slow: CLI start-up

    # A fresh classifier head is expected in every run; the load report would bury the bars.
    transformers.logging.set_verbosity_error()


@app.command("paper")
def paper_cmd(
    out: Out,
    preset: Preset = "default",
    quick: Quick = False,
    budget: Budget = None,
    workers: Workers = None,
    work: Work = None,
    progress: Progress = True,
    engine: Engine = "loop",
) -> None:
    """Every table and figure of the paper (and d90) on MiniLM and four packaged tasks."""
    from experiments.paper import PaperExperiment  # noqa: PLC0415 - imports torch: CLI start-up

    _quiet()
    cfg = _config(preset, quick, workers, engine)
    command = _command(out, preset, quick, workers, work, engine)
    with phase_progress(progress) as cb, _stops_on_budget(out):
        exp = PaperExperiment(
            cfg, out, work=work, budget_minutes=budget, progress=cb, command=command
        )
        report = exp.run()
    from experiments.report import headline  # noqa: PLC0415 - imports torch: CLI start-up

    console.print(f"report: {report}")
    console.print(headline(out))


@app.command("d90")
def d90_cmd(
    task: Annotated[str, typer.Option(help="Task name (one of the experiment's tasks).")],
    method: Annotated[str, typer.Option(help="fastfood | said | intrinsic | random")],
    out: Out,
    preset: Preset = "default",
    quick: Quick = False,
    budget: Budget = None,
    workers: Workers = None,
    work: Work = None,
    progress: Progress = True,
) -> None:
    """Search the smallest d reaching 90% of full fine-tuning, for one task and method."""
    from experiments.paper import PaperExperiment  # noqa: PLC0415 - imports torch: CLI start-up

    _quiet()
    cfg = _config(preset, quick, workers)
    with phase_progress(progress) as cb, _stops_on_budget(out):
        exp = PaperExperiment(cfg, out, work=work, budget_minutes=budget, progress=cb)
        result = exp.d90(task, method)
    for p in result["points"]:
        mark = "pass" if p["score"] >= result["target"] else "fail"
        console.print(f"  d={p['d']:>6}  {result['metric']} {p['score']:.4f}  {mark}")
    found = result["d90"]
    console.print(
        f"d90 of {task} / {method}: "
        + (
            f"{found} ({result['free_params']} free parameters)"
            if found
            else f"not reached up to d={result['max_tried']}"
        )
        + f"; target {result['target']:.4f} = {cfg.d90_fraction:g} x full"
    )


@app.command("report")
def report_cmd(out: Out) -> None:
    """Rebuild report.md and the figures from OUT's runs.jsonl (no training)."""
    from experiments.report import build_report, headline  # noqa: PLC0415 - imports torch: CLI start-up

    console.print(f"report: {build_report(out)}")
    console.print(headline(out))
