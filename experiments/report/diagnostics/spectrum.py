"""How much of the trajectory each task's basis holds: energy of its first k directions.

From DIR/diagnostics.json's 'spectrum' (one basis per task, so the spread shown is over
layers, not seeds).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.report.diagnostics.cells import (
    as_dict,
    as_float,
    dicts_in,
    figure_at,
    fmt_pct,
    ordered_tasks,
)
from experiments.report.diagnostics.files import SPECTRUM_KS
from experiments.report.diagnostics.plots import spectrum_plot
from experiments.report.markdown import DASH, Section, md_table
from experiments.report.results import Results
from experiments.report.stats import finite

FIG_SPECTRUM = "fig_spectrum.png"
T_SPECTRUM = "Spectrum and energy"


def section_spectrum(
    res: Results, diag: Mapping | None, out_dir: Path, draw: bool
) -> Section | None:
    spectrum = as_dict((diag or {}).get("spectrum"))
    if not spectrum:
        return None
    tasks = ordered_tasks(res, spectrum)
    layers = {t: dicts_in(as_dict(spectrum[t]).get("layers")) for t in tasks}
    modes = {t: as_dict(spectrum[t]).get("mode", DASH) for t in tasks}
    rows = [[t, modes[t], str(len(layers[t])), *_energy_cells(layers[t])] for t in tasks]
    header = ["task", "mode", "layers", *(f"k = {k}" for k in SPECTRUM_KS), "all kept"]
    panels = {t: _sigma_ratios(layers[t]) for t in tasks}
    panels = {t: p for t, p in panels.items() if p}
    body = [
        "Energy captured by the first k directions of each task's basis: their share of the "
        "trajectory matrix' squared Frobenius norm (%, mean over layers, min over layers in "
        "brackets). One basis per task, from one trajectory (the first seed's full run): no "
        "seed spread (n = 1), the spread shown is over layers. '–': k above the basis' rank.",
        md_table(header, rows),
    ]
    if "raw" in modes.values():
        body.append(
            "In a raw-mode basis the first direction is θ0's own and holds nearly all the "
            "energy; the fine-tuning motion lies in the others."
        )
    body.append(
        figure_at(
            out_dir,
            draw,
            FIG_SPECTRUM,
            "σ_k / σ_1 per layer",
            bool(panels),
            lambda p: spectrum_plot(panels, p),
        )
    )
    return Section(T_SPECTRUM, body)


def captured_at(layer: Mapping, k: int) -> float | None:
    """Energy share of the first k directions of one layer: from its cumulative list
    ('cumulative', or 'cumulative_energy' as worker.finetune.diagnostics writes it), else
    summed from its per-direction 'energy'; None above the rank."""
    listed = dicts_in(layer.get("cumulative") or layer.get("cumulative_energy"))
    for row in listed:
        if row.get("k") == k and finite(row.get("captured")):
            return float(row["captured"])
    if listed:
        return None
    energy = [float(e) for e in layer.get("energy") or [] if finite(e)]
    return float(sum(energy[:k])) if len(energy) >= k else None


def _energy_cells(layers: Sequence[Mapping]) -> list[str]:
    cells = []
    for k in SPECTRUM_KS:
        cells.append(_mean_min([captured_at(layer, k) for layer in layers], len(layers)))
    cells.append(_mean_min([_all_kept(layer) for layer in layers], len(layers)))
    return cells


def _all_kept(layer: Mapping) -> float | None:
    captured = as_float(layer.get("captured"))
    if captured is not None:
        return captured
    energy = [float(e) for e in layer.get("energy") or [] if finite(e)]
    return float(sum(energy)) if energy else None


def _mean_min(values: Sequence[float | None], n: int) -> str:
    kept = [v for v in values if v is not None]
    if not kept:
        return DASH
    text = f"{fmt_pct(statistics.fmean(kept))} ({fmt_pct(min(kept))})"
    return text + (f" [{len(kept)}/{n} layers]" if len(kept) < n else "")


def _sigma_ratios(layers: Sequence[Mapping]) -> dict[str, list[float]]:
    out = {}
    for i, layer in enumerate(layers):
        sv = [float(s) for s in layer.get("singular_values") or [] if finite(s)]
        if sv and sv[0] > 0:
            out[str(layer.get("layer", f"layer {i}"))] = [s / sv[0] for s in sv]
    return out
