"""Fits, plots and tables from benchmarks/scaling.py's results.

    python benchmarks/scaling_report.py benchmarks/results/scaling.json --docs docs

Writes docs/scaling_<study>.png (time and peak memory per study) and prints markdown tables:
the measurements, the fitted cost model and the projection for a 7B-parameter model.

Cost model (local executor, local disk, one basis; t rows, D values in all layers, rank k; the
delta mode reads theta0 with each block, so a pass reads (t + 1) D values):
    gram    = f + a (t + 1) D + b 2 t^2 D        (read + Gram flops, float64 products)
    project = g + c (t + 1) D + w k D            (read + product, + V written: D k float32)
fitted by non-negative least squares (relative errors) over the t, D and layers studies. 1/a
and 1/c are streaming rates (values/s: zarr decode + crc32c + float32 -> float64 + the
product's share that grows like t D), 1/b the Gram's extra cost per flop, 1/w the cost of one
value of V written. (The projection's 2 t k D flops grow like t D: with k fixed they cannot be
told apart from reading, so they are in c.) f and g are fixed costs per computation (opening
stores and arrays, the first tasks), negligible at the 7B scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

STUDIES = ("t", "D", "layers", "tasks", "executors", "warm")
XLABELS = {
    "t": "checkpoints t",
    "D": "values per layer D",
    "layers": "layers of 1,774,464",
    "tasks": "tasks (8 rows each)",
}


def _cases(doc: dict, study: str) -> list[dict]:
    return [c for c in doc["cases"] if c["study"] == study]


def _model_rows(doc: dict) -> list[dict]:
    """One task basis, local executor, local disk: the t, D and layers studies."""
    return [c for c in doc["cases"] if c["study"] in ("t", "D", "layers")]


def fit(doc: dict) -> dict:
    from scipy.optimize import nnls

    k = doc["rank"]
    rows = _model_rows(doc)
    values = np.array([(c["t"] + 1) * c["D"] * c["layers"] for c in rows], float)
    gram_flops = np.array([2 * c["t"] ** 2 * c["D"] * c["layers"] for c in rows], float)
    written = np.array([k * c["D"] * c["layers"] for c in rows], float)
    gram_s = np.array([c["phases"]["gram"] for c in rows])
    proj_s = np.array([c["phases"]["project"] for c in rows])
    # Relative least squares: every case weighs the same, small or large.
    wg, wp = 1 / gram_s, 1 / proj_s
    (f, a, b), _ = nnls(np.c_[wg, values * wg, gram_flops * wg], np.ones_like(gram_s))
    (g, c_, w), _ = nnls(np.c_[wp, values * wp, written * wp], np.ones_like(proj_s))
    pred_g = f + a * values + b * gram_flops
    pred_p = g + c_ * values + w * written
    return {
        "f": f,
        "g": g,
        "a": a,
        "b": b,
        "c": c_,
        "w": w,
        "cases": len(rows),
        "gram_rel_err": float(np.max(np.abs(pred_g / gram_s - 1))),
        "project_rel_err": float(np.max(np.abs(pred_p / proj_s - 1))),
    }


def project_7b(
    model: dict,
    *,
    params: float = 7e9,
    t: int = 64,
    k: int = 8,
    slots: int = 2,
    workers: tuple[int, ...] = (1, 8, 32, 128, 512),
    net_gbs: float = 1.25,
    store_gbs: float = 100.0,
    task_overhead_s: float = 0.002,
    block: int = 1 << 18,
) -> list[dict]:
    """Time on N single-core workers, from the fitted rates of this `slots`-core machine.

    Per worker: the fitted cost x slots (one core of this machine). Each pass reads
    (t + 1) x params float16 values (2 bytes) over the network: net_gbs GB/s per worker, at
    most store_gbs GB/s from the object store in total. Scheduling: params / block tasks per
    pass at task_overhead_s each on the scheduler. The slowest of compute, network and store
    sets each pass; V (params x k float32) is written once.
    """
    values = (t + 1) * params
    cpu_gram = (model["a"] * values + model["b"] * 2 * t**2 * params) * slots
    cpu_proj = (model["c"] * values + model["w"] * k * params) * slots
    tasks = params / block
    out = []
    for n in workers:
        io = values * 2 / 1e9 / min(n * net_gbs, store_gbs)
        sched = tasks * task_overhead_s
        gram = max(cpu_gram / n, io, sched)
        proj = max(cpu_proj / n, io + params * k * 4 / 1e9 / min(n * net_gbs, store_gbs), sched)
        out.append(
            {"workers": n, "gram_s": gram, "project_s": proj, "total_h": (gram + proj) / 3600}
        )
    return out


def plot(doc: dict, docs: Path, model: dict | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for study in STUDIES:
        cases = _cases(doc, study)
        if not cases:
            continue
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
        if study in ("executors", "warm"):
            labels = [c["label"] for c in cases]
            x = np.arange(len(cases))
            ax_t.bar(x, [c["seconds"] for c in cases], color="tab:blue")
            ax_m.bar(x - 0.2, [c["peak_driver_mb"] for c in cases], 0.4, label="driver")
            ax_m.bar(x + 0.2, [c["peak_workers_mb"] or 0 for c in cases], 0.4, label="workers")
            for ax in (ax_t, ax_m):
                ax.set_xticks(x, labels, rotation=30, ha="right")
        else:
            key = {"t": "t", "D": "D", "layers": "layers", "tasks": "tasks"}[study]
            xs = [c[key] for c in cases]
            for phase in ("gram", "project"):
                ax_t.plot(xs, [c["phases"][phase] for c in cases], "o-", label=phase)
            ax_t.plot(xs, [c["seconds"] for c in cases], "ks--", label="total")
            if model is not None and study in ("t", "D", "layers"):
                fitted = [
                    model["f"] + model["a"] * (c["t"] + 1) * c["D"] * c["layers"]
                    + model["b"] * 2 * c["t"] ** 2 * c["D"] * c["layers"]
                    for c in cases
                ]  # fmt: skip
                ax_t.plot(xs, fitted, ":", color="tab:blue", label="gram, fitted model")
            ax_m.plot(xs, [c["peak_driver_mb"] for c in cases], "o-", label="driver peak growth")
            for ax in (ax_t, ax_m):
                ax.set_xscale("log", base=2)
                ax.set_xlabel(XLABELS[study])
            ax_t.set_yscale("log")
        ax_t.set_ylabel("seconds (best of repeats)")
        ax_m.set_ylabel("MB")
        if study not in ("executors", "warm"):
            ax_t.legend()
        ax_m.legend()
        ax_t.set_title(f"{study}: time")
        ax_m.set_title(f"{study}: peak memory growth")
        fig.tight_layout()
        path = docs / f"scaling_{study}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def tables(doc: dict, model: dict) -> str:
    lines = []
    for study in STUDIES:
        cases = _cases(doc, study)
        if not cases:
            continue
        lines += [f"\n### {study}\n", "| case | t | D (all layers) | seconds | gram | eigh | "
                  "project | hash | repeats | driver MB | workers MB | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for c in cases:
            p = c["phases"]
            workers = "-" if c["peak_workers_mb"] is None else f"{c['peak_workers_mb']:.0f}"
            lines.append(
                f"| {c['label']} | {c['rows']} | {c['D'] * c['layers']:,} | {c['seconds']:.2f} | "
                f"{p.get('gram', 0):.2f} | {p.get('eigh', 0):.3f} | {p.get('project', 0):.2f} | "
                f"{p.get('hash', 0):.2f} | {', '.join(f'{s:.2f}' for s in c['repeats'])} | "
                f"{c['peak_driver_mb']:.0f} | {workers} | "
                f"{c['load_before'][0]:.1f} / {c['load_after'][0]:.1f} |"
            )
    lines += [
        "\n### fitted model\n",
        f"- a = {model['a']:.3g} s/value (streaming {1 / model['a'] / 1e6:.0f} M values/s)"
        if model["a"]
        else "- a = 0",
        f"- b = {model['b']:.3g} s/flop ({1 / model['b'] / 1e9:.2f} GFLOP/s in the Gram)"
        if model["b"]
        else "- b = 0",
        f"- c = {model['c']:.3g} s/value (streaming {1 / model['c'] / 1e6:.0f} M values/s)"
        if model["c"]
        else "- c = 0",
        f"- w = {model['w']:.3g} s per value of V written ({1 / model['w'] / 1e6:.0f} M/s)"
        if model["w"]
        else "- w = 0",
        f"- over {model['cases']} cases; largest relative error gram "
        f"{model['gram_rel_err']:.0%}, project {model['project_rel_err']:.0%}",
        f"- fixed: f = {model['f']:.2f} s (gram), g = {model['g']:.2f} s (project)",
        "\n### 7B projection\n",
        "| workers | pass 1 (Gram) | pass 2 (projection) | total |",
        "|---|---|---|---|",
    ]
    for row in project_7b(model):
        lines.append(
            f"| {row['workers']} | {row['gram_s'] / 3600:.2f} h | {row['project_s'] / 3600:.2f} h "
            f"| {row['total_h']:.2f} h |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    args = ap.parse_args(argv)
    doc = json.loads(args.results.read_text())
    model = fit(doc)
    args.docs.mkdir(parents=True, exist_ok=True)
    for path in plot(doc, args.docs, model):
        print(f"wrote {path}")
    print(tables(doc, model))
    print("\nmodel:", json.dumps(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
