"""The diagnostics sections whose data exist, in report order, each built without raising.

Why a guard per section: the side files are hand-editable and may be half-written, and a
malformed one must cost its own section (which then says what is wrong), never the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from experiments.report.diagnostics.below_freeze import T_BELOW, section_below_freeze
from experiments.report.diagnostics.controls import T_CONTROLS, section_controls
from experiments.report.diagnostics.curves import T_CURVES, section_curves
from experiments.report.diagnostics.files import (
    DIAGNOSTICS_FILE,
    OUTLIERS_FILE,
    PRODUCERS,
    TUNING_FILE,
    load_side_file,
)
from experiments.report.diagnostics.oracle import T_ORACLE, section_oracle
from experiments.report.diagnostics.spectrum import T_SPECTRUM, section_spectrum
from experiments.report.diagnostics.theta import T_THETA, section_theta
from experiments.report.diagnostics.tuning import T_TUNING, section_tuning
from experiments.report.markdown import Section
from experiments.report.results import Results

# What malformed hand-written or partial JSON raises inside a section builder.
_DATA_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError)


def diagnostic_sections(res: Results, out_dir: Path, draw: bool) -> list[Section]:
    """The diagnostics sections whose data exist in `out_dir` (and `res`), in report order:
    tuning, spectrum, oracle, learning curves, theta vs extent, runs below freeze, outlier
    controls. Figures are written into `out_dir` when `draw`. Never raises on bad data."""
    out_dir = Path(out_dir)
    files = {name: load_side_file(out_dir, name) for name in PRODUCERS}
    data = {name: got for name, (got, _) in files.items()}
    diag = data[DIAGNOSTICS_FILE]
    builders: list[tuple[str, str | None, Callable[[], Section | None]]] = [
        (T_TUNING, TUNING_FILE, lambda: section_tuning(res, data[TUNING_FILE])),
        (T_SPECTRUM, DIAGNOSTICS_FILE, lambda: section_spectrum(res, diag, out_dir, draw)),
        (T_ORACLE, DIAGNOSTICS_FILE, lambda: section_oracle(res, diag, out_dir, draw)),
        (T_CURVES, None, lambda: section_curves(res, out_dir, draw)),
        (T_THETA, None, lambda: section_theta(res, diag, out_dir, draw)),
        (T_BELOW, None, lambda: section_below_freeze(res)),
        (T_CONTROLS, None, lambda: section_controls(res, data[OUTLIERS_FILE])),
    ]
    sections = []
    for title, name, build in builders:
        problem = files[name][1] if name else None
        section = _unreadable(title, name, problem) if problem else _safely(title, build)
        if section is not None:
            sections.append(section)
    return sections


def _safely(title: str, build: Callable[[], Section | None]) -> Section | None:
    # A half-written or hand-edited file must not cost the whole report.
    try:
        return build()
    except _DATA_ERRORS as exc:
        return Section(title, [f"Not built: its input is malformed ({type(exc).__name__}: {exc})."])


def _unreadable(title: str, name: str | None, problem: str) -> Section:
    return Section(
        title,
        [f"{name} {problem}: rerun the {PRODUCERS.get(name or '', '?')} phase to rewrite it."],
    )
