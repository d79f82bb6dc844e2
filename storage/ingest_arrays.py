"""Ingesting bare numpy arrays (t, D) per group: .npz, .npy, or a folder of .npy files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storage.errors import InvalidInput, LayoutMismatch, NotFound
from storage.ingest_rows import (
    IngestReport,
    Progress,
    Row,
    StoreOptions,
    ingest_rows,
    open_existing,
)
from storage.layout import Group, Layout, ParamSpec
from storage.trajectory import TrajectoryStore


# --------------------------------------------------------------------------------- arrays
def flat_layout(sizes: Mapping[str, int]) -> Layout:
    """A layout for bare arrays: one group per name, one flat parameter `values` each."""
    groups = tuple(
        Group(name, "", (ParamSpec("values", (int(size),), 0),)) for name, size in sizes.items()
    )
    return Layout(rule="arrays", groups=groups)


def load_arrays(
    path: str | os.PathLike[str],
) -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[Any] | None, npt.NDArray[Any] | None]:
    """Arrays (t, D) per group from a `.npz` file, a `.npy` file or a folder of `.npy` files.

    A `.npy` file is named after its group (`layer.0.npy`) and memory-mapped, so ingesting it
    reads one row at a time; `.npz` members are loaded a group at a time. Optional `step` and
    `epoch` (t,) arrays give the row metadata. Returns (arrays, steps, epochs).
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"array input {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise InvalidInput(f"{path} holds no .npy files")
        found = {f.name[: -len(".npy")]: f for f in files}
    elif path.suffix == ".npy":
        found = {path.name[: -len(".npy")]: path}
    elif path.suffix == ".npz":
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path} is not a readable .npz file: {exc}") from exc
        found = {k: npz for k in npz.files}
    else:
        raise InvalidInput(f"{path} is not a .npy or .npz file, nor a folder of .npy files")
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, source in found.items():
        try:
            arrays[name] = (
                source[name]
                if not isinstance(source, Path)
                else np.load(source, mmap_mode="r", allow_pickle=False)
            )
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path}: cannot read {name!r}: {exc}") from exc
    steps, epochs = arrays.pop("step", None), arrays.pop("epoch", None)
    return arrays, steps, epochs


def ingest_arrays(
    url: str | os.PathLike[str],
    arrays: Mapping[str, Any] | str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    steps: Sequence[int] | npt.NDArray[Any] | None = None,
    epochs: Sequence[float] | npt.NDArray[Any] | None = None,
    options: StoreOptions | None = None,
    verify_existing: bool = True,
    preflight: bool = True,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest rows given as one (t, D_group) array per group (in memory, or a path).

    Row i of every array is checkpoint i (row 0 is theta0). The store's layout, or `layout`,
    says which groups and sizes are expected; without either, each array becomes one group.
    """
    options = options or StoreOptions()
    name = "arrays"
    if isinstance(arrays, str | os.PathLike):
        name = os.fspath(arrays)
        arrays, file_steps, file_epochs = load_arrays(arrays)
        steps = file_steps if steps is None else steps
        epochs = file_epochs if epochs is None else epochs
    t, given = _array_shapes(name, arrays, steps, epochs)
    store = open_existing(url, options)
    layout = _arrays_layout(name, given, store, layout)
    rows = [_array_row(name, arrays, i, steps, epochs) for i in range(t)]
    return ingest_rows(
        url,
        rows,
        layout,
        store,
        options,
        verify_existing=verify_existing,
        preflight=preflight,
        progress=progress,
    )


def _array_shapes(
    name: str,
    arrays: Mapping[str, Any],
    steps: Sequence[int] | npt.NDArray[Any] | None,
    epochs: Sequence[float] | npt.NDArray[Any] | None,
) -> tuple[int, dict[str, int]]:
    """(rows, {group: D_group}) of arrays that are all 2-D with one row count, which the step
    and epoch values (if given) match."""
    if not arrays:
        raise InvalidInput(f"{name}: no arrays given")
    shapes = {g: np.shape(a) for g, a in arrays.items()}
    bad = {g: s for g, s in shapes.items() if len(s) != 2}
    if bad:
        raise InvalidInput(f"{name}: arrays must be (rows, D) per group; got shapes {bad}")
    lengths = {s[0] for s in shapes.values()}
    if len(lengths) != 1:
        raise InvalidInput(f"{name}: groups have different numbers of rows {shapes}")
    t = lengths.pop()
    for label, meta in (("step", steps), ("epoch", epochs)):
        if meta is not None and len(meta) != t:
            raise InvalidInput(f"{name}: {len(meta)} {label} values for {t} rows")
    return t, {g: s[1] for g, s in shapes.items()}


def _arrays_layout(
    name: str, given: dict[str, int], store: TrajectoryStore | None, layout: Layout | None
) -> Layout:
    """The layout the arrays go in: the store's (which a given one must agree with), else the
    given one, else one group per array; the arrays' sizes must match its groups."""
    if store is not None:
        if layout is not None:
            store.layout.check_compatible(layout, "the given layout")
        layout = store.layout
    elif layout is None:
        layout = flat_layout(given)
    expected = {g.name: g.size for g in layout.groups}
    if given != expected:
        raise LayoutMismatch(
            f"{name}: arrays {given} do not match the layout's groups {expected} "
            f"(layout {layout.hash[:12]})"
        )
    return layout


def _array_row(
    name: str,
    arrays: Mapping[str, Any],
    i: int,
    steps: Sequence[int] | npt.NDArray[Any] | None,
    epochs: Sequence[float] | npt.NDArray[Any] | None,
) -> Row:
    return Row(
        f"{name}[{i}]",
        lambda: {g: np.asarray(a[i]) for g, a in arrays.items()},
        step=None if steps is None else int(steps[i]),
        epoch=None if epochs is None else float(epochs[i]),
    )
