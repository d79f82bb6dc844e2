"""How outlier positions relate to other sets: to the largest weights of theta0
(`top_magnitude_overlap`) and to another task's outliers (`overlap`), each against the
baseline of uniformly random positions (`expected_jaccard`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from storage.errors import InvalidInput
from storage.layout import Layout


def _flat(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def top_magnitude_overlap(
    positions: Mapping[str, np.ndarray], theta0: Mapping[str, np.ndarray]
) -> dict:
    """How far the outliers are just the largest weights of theta0.

    Per layer with m unique positions: ``hits``, how many of them are among the m entries of
    largest |theta0| of the layer, and ``fraction`` = hits / m, against ``expected`` = m / size
    for a uniformly random set. "Among the m largest" means |theta0| at least the m-th largest
    value, so ties at that threshold count as inside (a fresh model's LayerNorm gains are all
    exactly 1.0; with such ties ``expected`` understates the random baseline). ``total`` pools
    the layers: hits / count against sum(m^2 / size) / count.
    """
    layers, hits_all, count_all, expected_hits = [], 0, 0, 0.0
    for layer, flat in positions.items():
        if layer not in theta0:
            raise InvalidInput(f"theta0 has no layer {layer!r}; it has {list(theta0)}")
        mag = np.abs(_flat(theta0[layer]))
        flat = np.unique(np.asarray(flat, dtype=np.int64))
        if flat.size and (flat[0] < 0 or flat[-1] >= mag.size):
            raise InvalidInput(f"positions of {layer} fall outside its {mag.size} weights")
        m = int(flat.size)
        hits = 0
        if m:
            threshold = np.partition(mag, mag.size - m)[mag.size - m]  # m-th largest
            hits = int(np.count_nonzero(mag[flat] >= threshold))
        layers.append(
            {
                "layer": layer,
                "count": m,
                "size": int(mag.size),
                "hits": hits,
                "fraction": hits / m if m else None,
                "expected": m / mag.size if mag.size else 0.0,
            }
        )
        hits_all, count_all = hits_all + hits, count_all + m
        expected_hits += m * m / mag.size if mag.size else 0.0
    total = {
        "count": count_all,
        "hits": hits_all,
        "fraction": hits_all / count_all if count_all else None,
        "expected": expected_hits / count_all if count_all else None,
    }
    return {"layers": layers, "total": total}


def expected_jaccard(m: int, n: int, size: int) -> float | None:
    """E[|A∩B| / |A∪B|] for independent uniform random subsets of sizes m and n of `size`.

    |A∩B| is hypergeometric (population `size`, m successes, n draws); its pmf is built in log
    space from the ratio P(k+1)/P(k) = (m-k)(n-k) / ((k+1)(size-m-n+k+1)) and normalized, so
    no factorials overflow. Exact; O(min(m, n)) time. None when m = n = 0.
    """
    if not 0 <= m <= size or not 0 <= n <= size:
        raise InvalidInput(f"set sizes {m} and {n} do not fit in {size} positions")
    if m + n == 0:
        return None
    lo, hi = max(0, m + n - size), min(m, n)
    k = np.arange(lo, hi + 1, dtype=np.float64)
    step = np.log((m - k[:-1]) * (n - k[:-1])) - np.log((k[:-1] + 1) * (size - m - n + k[:-1] + 1))
    logp = np.concatenate([[0.0], np.cumsum(step)])
    p = np.exp(logp - logp.max())
    return float((p * k / (m + n - k)).sum() / p.sum())


def _sizes_of(sizes: Layout | Mapping[str, int] | None) -> Mapping[str, int] | None:
    if isinstance(sizes, Layout):
        return {g.name: g.size for g in sizes.groups}
    return sizes


def overlap(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    *,
    sizes: Layout | Mapping[str, int] | None = None,
) -> dict:
    """Overlap of two position sets (e.g. two tasks' outliers), per layer and in total.

    Per layer (those of `a`, then those only in `b`; a missing layer is empty): ``intersection``
    |A∩B|, ``a`` |A|, ``b`` |B|, ``jaccard`` |A∩B| / |A∪B| (None when both are empty). With
    `sizes` (a Layout or layer -> number of weights) also the random baseline for sets of the
    same sizes: ``expected_intersection`` |A||B| / size and the exact ``expected_jaccard``.
    ``total`` pools the layers (a position is a layer and an index); its expected Jaccard is
    E[sum |A∩B|] / (|A| + |B| - E[sum |A∩B|]), the ratio of expectations, which the exact
    expectation approaches as the counts grow.
    """
    sizes = _sizes_of(sizes)
    layers = []
    for layer in list(a) + [x for x in b if x not in a]:
        sa = np.unique(np.asarray(a.get(layer, ()), dtype=np.int64))
        sb = np.unique(np.asarray(b.get(layer, ()), dtype=np.int64))
        inter = int(np.intersect1d(sa, sb, assume_unique=True).size)
        union = sa.size + sb.size - inter
        row = {
            "layer": layer,
            "intersection": inter,
            "a": int(sa.size),
            "b": int(sb.size),
            "jaccard": inter / union if union else None,
        }
        if sizes is not None:
            if layer not in sizes:
                raise InvalidInput(f"no size for layer {layer!r}; sizes has {list(sizes)}")
            size = int(sizes[layer])
            row["expected_intersection"] = sa.size * sb.size / size if size else 0.0
            row["expected_jaccard"] = expected_jaccard(int(sa.size), int(sb.size), size)
        layers.append(row)
    return {"layers": layers, "total": _pooled(layers, sizes is not None)}


def _pooled(layers: list[dict], with_expected: bool) -> dict:
    inter = sum(r["intersection"] for r in layers)
    na, nb = sum(r["a"] for r in layers), sum(r["b"] for r in layers)
    total = {"intersection": inter, "a": na, "b": nb}
    total["jaccard"] = inter / (na + nb - inter) if na + nb - inter else None
    if with_expected:
        e = sum(r["expected_intersection"] for r in layers)
        total["expected_intersection"] = e
        total["expected_jaccard"] = e / (na + nb - e) if na + nb - e else None
    return total
