"""Outlier dimensions of subspace fine-tuning (Zhang et al. 2023, section 4.5).

The update V_l theta of layer l is a vector over *all* parameters of the layer; an outlier
dimension is one weight whose update lies at least 3 sigma from the layer's mean update.
This module finds them (count, fraction, positions by parameter name and layer: Table 4),
keeps a compact per-layer profile of |V theta| for plots (Figure 4), and turns the positions
into masks for the disabling experiment (Table 3: fine-tune in the full space with those
weights held at zero, and again with as many random weights held at zero).

Note on the 3-sigma rule: a Gaussian puts P(|Z| > 3) = 0.27% of its entries beyond 3 sigma,
so every layer has "outliers" by this rule; what distinguishes a spiky update is the excess
over that expectation (reported as ``excess``) and its heavy tail (``kurtosis``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from storage.errors import InvalidInput, NotFound
from storage.layout import Layout

OUTLIERS_JSON = "outliers.json"
OUTLIERS_NPZ = "outliers.npz"


@dataclass
class LayerOutliers:
    layer: str
    size: int
    mean: float
    std: float
    kurtosis: float  # excess kurtosis: 0 for a Gaussian
    sigma: float
    indices: np.ndarray  # (m,) flat positions in the layer vector, largest |z| first
    values: np.ndarray  # (m,) the updates at those positions

    @property
    def count(self) -> int:
        return int(self.indices.size)

    @property
    def fraction(self) -> float:
        return self.count / self.size if self.size else 0.0

    @property
    def expected_gaussian(self) -> float:
        return self.size * math.erfc(self.sigma / math.sqrt(2))

    def summary(self) -> dict:
        return {
            "layer": self.layer,
            "size": self.size,
            "count": self.count,
            "fraction": self.fraction,
            "expected_gaussian": self.expected_gaussian,
            "excess": self.count / self.expected_gaussian if self.expected_gaussian else None,
            "mean": self.mean,
            "std": self.std,
            "kurtosis": self.kurtosis,
            "max_abs": float(np.abs(self.values).max()) if self.count else 0.0,
        }


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def find_outliers(updates: Mapping[str, object], sigma: float = 3.0) -> dict[str, LayerOutliers]:
    """Entries of each layer's update that deviate at least `sigma` std from the layer mean."""
    if not sigma > 0:
        raise InvalidInput(f"sigma must be positive, got {sigma}")
    out = {}
    for layer, u in updates.items():
        u = _as_numpy(u)
        mean, std = float(u.mean()), float(u.std())
        if std == 0:
            idx = np.empty(0, dtype=np.int64)
            kurt = 0.0
        else:
            z = (u - mean) / std
            idx = np.flatnonzero(np.abs(z) >= sigma)
            idx = idx[np.argsort(-np.abs(z[idx]), kind="stable")]
            kurt = float((z**4).mean() - 3.0)
        out[layer] = LayerOutliers(layer, u.size, mean, std, kurt, sigma, idx, u[idx])
    return out


def locate(layout: Layout, layer: str, flat: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    """Flat positions of a layer vector -> (parameter name, index inside the parameter)."""
    group = layout.group(layer)
    offsets = np.array([p.offset for p in group.params])
    where = np.searchsorted(offsets, flat, side="right") - 1
    out = []
    for pos, w in zip(flat.tolist(), where.tolist(), strict=True):
        spec = group.params[w]
        out.append(
            (spec.name, tuple(int(i) for i in np.unravel_index(pos - spec.offset, spec.shape)))
        )
    return out


def position_table(found: Mapping[str, LayerOutliers], layout: Layout, top: int = 10) -> list[dict]:
    """The paper's Table 4: for each model component, the layers where it holds some of the
    layer's `top` largest outliers, and how many."""
    table: dict[str, dict[str, int]] = {}
    for layer, rep in found.items():
        for name, _ in locate(layout, layer, rep.indices[:top]):
            table.setdefault(name, {})
            table[name][layer] = table[name].get(layer, 0) + 1
    order = {p.name: i for g in layout.groups for i, p in enumerate(g.params)}
    return [
        {"component": name, "layers": list(per), "counts": list(per.values())}
        for name, per in sorted(table.items(), key=lambda kv: order.get(kv[0], 1 << 30))
    ]


def profile(update, bins: int = 2048) -> np.ndarray:
    """max |u| over `bins` equal slices of a layer's update: keeps every spike visible in a
    plot of millions of entries at a few KiB per layer."""
    u = np.abs(_as_numpy(update))
    bins = min(bins, u.size)
    edges = np.linspace(0, u.size, bins + 1).astype(np.int64)
    return np.maximum.reduceat(u, edges[:-1]).astype(np.float32)


def report(found: Mapping[str, LayerOutliers], layout: Layout, top: int = 10) -> dict:
    """JSON summary: per layer counts and fractions, totals, Table 4, top positions."""
    layers = [r.summary() for r in found.values()]
    total = sum(r.count for r in found.values())
    size = sum(r.size for r in found.values())
    return {
        "sigma": next(iter(found.values())).sigma if found else None,
        "total_count": total,
        "total_fraction": total / size if size else 0.0,
        "expected_gaussian_fraction": math.erfc(next(iter(found.values())).sigma / math.sqrt(2))
        if found
        else None,
        "layers": layers,
        "table4": position_table(found, layout, top),
        "top": {
            layer: [
                {"parameter": name, "index": list(index), "value": float(v)}
                for (name, index), v in zip(
                    locate(layout, layer, rep.indices[:top]), rep.values[:top], strict=True
                )
            ]
            for layer, rep in found.items()
        },
    }


def save(
    path: str | os.PathLike,
    found: Mapping[str, LayerOutliers],
    layout: Layout,
    updates: Mapping[str, object],
    top: int = 10,
) -> dict:
    """Write outliers.json (the report) and outliers.npz (positions, values and |V theta|
    profiles per layer) into the folder `path`. Returns the report."""
    os.makedirs(path, exist_ok=True)
    rep = report(found, layout, top)
    arrays = {}
    for layer, r in found.items():
        arrays[f"{layer}/indices"] = r.indices.astype(np.int64)
        arrays[f"{layer}/values"] = r.values.astype(np.float32)
        arrays[f"{layer}/profile"] = profile(updates[layer])
    np.savez_compressed(os.path.join(path, OUTLIERS_NPZ), **arrays)
    with open(os.path.join(path, OUTLIERS_JSON), "w") as f:
        json.dump(rep, f, indent=2)
    return rep


def load_arrays(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """layer -> {'indices', 'values', 'profile'} from a folder written by `save`."""
    file = os.path.join(path, OUTLIERS_NPZ)
    if not os.path.exists(file):
        raise NotFound(f"no outlier analysis at {path} (no {OUTLIERS_NPZ}); run a subspace method")
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(file) as data:
        for key in data.files:
            layer, _, what = key.rpartition("/")
            out.setdefault(layer, {})[what] = data[key]
    return out


def disable_masks(
    layout: Layout,
    positions: Mapping[str, np.ndarray],
    *,
    mode: str = "outlier",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Parameter name -> bool mask of the weights to hold at zero (Table 3).

    mode 'outlier': the given positions; 'random': as many positions per layer, drawn uniformly
    without replacement from the whole layer with `seed`.
    """
    if mode not in ("outlier", "random"):
        raise InvalidInput(f"disable mode {mode!r} is not 'outlier' or 'random'")
    rng = np.random.default_rng(seed)
    masks: dict[str, torch.Tensor] = {}
    for layer, flat in positions.items():
        group = layout.group(layer)
        flat = np.asarray(flat, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= group.size):
            raise InvalidInput(
                f"outlier positions of {layer} fall outside its {group.size} parameters"
            )
        if mode == "random":
            flat = rng.choice(group.size, size=flat.size, replace=False)
        vec = np.zeros(group.size, dtype=bool)
        vec[flat] = True
        for spec, full in zip(group.params, group.full_names(), strict=True):
            part = vec[spec.offset : spec.offset + spec.numel]
            if part.any():
                masks[full] = torch.from_numpy(part.reshape(spec.shape).copy())
    return masks


def plot_profiles(
    panels: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike, title: str = ""
) -> None:
    """Figure 4: one panel per run (e.g. intrinsic above random) of max |V theta| per bin,
    layers side by side. Written with the Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - matplotlib: optional, slow
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib: optional, slow

    fig = Figure(figsize=(12, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (label, layers) in zip(axes, panels.items(), strict=True):
        pos, centers = 0, []
        for i, prof in enumerate(layers.values()):
            ax.plot(np.arange(pos, pos + prof.size), prof, lw=0.6, color=f"C{i % 10}")
            ax.axvline(pos, color="0.85", lw=0.5)
            centers.append(pos + prof.size / 2)
            pos += prof.size
        ax.set_xticks(centers, list(layers), fontsize=8)
        ax.set_ylabel("max |V theta| per bin")
        ax.set_title(label, loc="left", fontsize=9)
        ax.set_xlim(0, pos)
        ax.set_ylim(bottom=0)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
