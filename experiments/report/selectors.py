"""Which records feed which table: selectors on a record's fields.

Why by fields and never by phase: one run can serve several tables (intrinsic at dim 16 is in
Tables 5/6, the modes comparison and a d90 search), so a table names the runs it wants by
method, variant, mode, dim and scope, wherever they were run from.
"""

from __future__ import annotations

from experiments.report.results import Record, Selector, Value

MODES = ("raw", "delta", "centered")


def _mode(r: Record) -> str:
    return r.get("mode") or (r.get("variant") if r.get("variant") in MODES else "delta")


def _layerwise(r: Record) -> bool:
    return r.get("scope", "layer") == "layer" and not r.get("said")


def is_full(r: Record) -> bool:
    return r["method"] == "full" and r.get("variant", "-") in ("-", None)


def is_freeze(r: Record) -> bool:
    return r["method"] == "freeze"


def random_at(dim: int) -> Selector:
    return lambda r: r["method"] == "random" and r.get("dim") == dim and _layerwise(r)


def intrinsic_at(dim: int, mode: str = "delta") -> Selector:
    # The variant of an intrinsic run is its mode; the theta-lr check runs ("delta-lr0.01")
    # are kept out of every table but their own.
    return lambda r: (
        r["method"] == "intrinsic"
        and r.get("dim") == dim
        and _mode(r) == mode
        and r.get("variant", mode) == mode
        and _layerwise(r)
    )


def intrinsic_lr(dim: int, lr: float) -> Selector:
    return lambda r: (
        r["method"] == "intrinsic"
        and r.get("dim") == dim
        # "-plain": the paper's rule (plain V theta); older reports ran the lr alone.
        and r.get("variant") in (f"delta-lr{lr:g}-plain", f"delta-lr{lr:g}")
    )


def transfer_from(source: str, dim: int) -> Selector:
    def sel(r: Record) -> bool:
        came = r.get("basis_from") or str(r.get("variant", "")).removeprefix("from-")
        return r["method"] == "transfer" and came == source and r.get("dim") == dim

    return sel


def method_at(method: str, dim: int | None) -> Selector:
    return lambda r: r["method"] == method and (dim is None or r.get("dim") == dim)


def disabled(kind: str) -> Selector:
    return lambda r: r["method"] == "full" and r.get("variant") == f"disable-{kind}"


def outlier_value(key: str) -> Value:
    return lambda r: (r.get("outliers") or {}).get(key)
