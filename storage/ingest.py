"""Filling a trajectory store from saved checkpoints or numpy arrays, resumably.

Both ingesters work in two phases. `check` reads every row that is not committed yet and runs
every test a write would run (layout, finite values, dtype range) without writing; only then does
`write` create the store (if needed) and append the rows. So bad input leaves the store exactly as
it was. Rows the store already holds are re-sent through `write_row`, which accepts equal bytes
and raises `Conflict` on different ones: a resumed ingestion continues where the last one stopped
and proves the committed prefix is the same data. Memory: one row (all groups of one checkpoint,
float32) plus one tensor.

The training-time writer, `TrajectoryCallback`, lives in `storage.callback` (it needs
transformers); it is re-exported here lazily.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from storage.arrays import check_dtype, flatten_state
from storage.checkpoints import Checkpoint, Weights, folder_layout, list_checkpoints, weight_files
from storage.errors import Conflict, InvalidInput, LayoutMismatch, NotFound, TinysubError
from storage.layout import Group, Layout, ParamSpec, build_layout
from storage.trajectory import DEFAULT_CHUNK_COLS, TrajectoryStore, encode_row

if TYPE_CHECKING:
    from storage.callback import TrajectoryCallback

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""`progress(phase, done, total)`, phase `check` or `write` (the CLI's rich bars)."""


@dataclass(frozen=True)
class IngestReport:
    url: str
    rows: int  # committed rows in the store afterwards
    written: int  # rows this call appended
    verified: int  # committed rows re-sent and found equal
    skipped: int  # committed rows neither re-sent nor checked (verify_existing=False)
    layout_hash: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StoreOptions:
    """How a store is created when it does not exist yet (ignored for an existing store)."""

    model_name: str = ""
    revision: str | None = None
    dtype: str = "float32"
    chunk_cols: int = DEFAULT_CHUNK_COLS
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Checked before any input is read, not when the store is finally created.
        check_dtype(self.dtype)
        if self.chunk_cols < 1:
            raise InvalidInput(f"chunk_cols must be positive, not {self.chunk_cols}")


@dataclass
class _Row:
    """One row to ingest: where it comes from, its metadata, and how to load it."""

    name: str  # for messages: the checkpoint folder or `<file>[i]`
    load: Callable[[], dict[str, npt.NDArray[Any]]]  # group -> flat float32 vector
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] | None = None


@contextmanager
def _named(name: str) -> Iterator[None]:
    """Prefix any tinysub error with the input it came from, keeping its class."""
    try:
        yield
    except TinysubError as exc:
        if str(exc).startswith(name):
            raise
        raise type(exc)(f"{name}: {exc}", detail=exc.detail) from exc


def _existing(url: str | os.PathLike[str], options: StoreOptions) -> TrajectoryStore | None:
    if not TrajectoryStore.exists(url, options.storage_options):
        return None
    store = TrajectoryStore.open(url, read_only=False, storage_options=options.storage_options)
    for field_name, given in (("model_name", options.model_name), ("revision", options.revision)):
        held = store.manifest.get(field_name)
        if given and held and given != held:
            raise Conflict(f"store {store.url} holds {field_name} {held!r}, not {given!r}")
    return store


def _ingest(
    url: str | os.PathLike[str],
    rows: Sequence[_Row],
    layout: Layout,
    store: TrajectoryStore | None,
    options: StoreOptions,
    *,
    verify_existing: bool,
    preflight: bool,
    progress: Progress | None,
) -> IngestReport:
    started = time.perf_counter()
    done = store.num_rows if store is not None else 0
    dtype = store.dtype if store is not None else options.dtype
    if preflight:
        _check_rows(rows[done:], layout, dtype, progress)
    if store is None:
        store = TrajectoryStore.create(
            url,
            layout,
            model_name=options.model_name,
            revision=options.revision,
            dtype=options.dtype,
            chunk_cols=options.chunk_cols,
            storage_options=options.storage_options,
        )
    written, verified, skipped = _write_rows(store, rows, done, verify_existing, progress)
    log.info("%s: %d rows written, %d verified, %d skipped", store.url, written, verified, skipped)
    return IngestReport(
        url=store.url,
        rows=store.num_rows,
        written=written,
        verified=verified,
        skipped=skipped,
        layout_hash=store.layout.hash,
        seconds=time.perf_counter() - started,
    )


def _check_rows(
    pending: Sequence[_Row], layout: Layout, dtype: str, progress: Progress | None
) -> None:
    """Phase `check`: run every test a write would run on the pending rows, writing nothing."""
    for i, row in enumerate(pending):
        with _named(row.name):
            encode_row(row.load(), layout, dtype)
        if progress:
            progress("check", i + 1, len(pending))


def _write_rows(
    store: TrajectoryStore,
    rows: Sequence[_Row],
    done: int,
    verify_existing: bool,
    progress: Progress | None,
) -> tuple[int, int, int]:
    """Phase `write`: append the rows past the `done` committed ones; re-send the committed ones
    (or, without `verify_existing`, only compare their steps). Returns (written, verified,
    skipped)."""
    written = verified = skipped = 0
    for index, row in enumerate(rows):
        with _named(row.name):
            if index < done and not verify_existing:
                _check_step(store, index, row)
                skipped += 1
            elif index < done:
                _verify_row(store, index, row)
                verified += 1
            else:
                store.write_row(
                    index, row.load(), step=row.step, epoch=row.epoch, metrics=row.metrics
                )
                written += 1
        if progress:
            progress("write", index + 1, len(rows))
    return written, verified, skipped


def _check_step(store: TrajectoryStore, index: int, row: _Row) -> None:
    """A committed row not re-sent must at least be the same step."""
    held = store.row(index).step
    if row.step is not None and held is not None and held != row.step:
        raise Conflict(f"row {index} of {store.url} is step {held}, not {row.step}")


def _verify_row(store: TrajectoryStore, index: int, row: _Row) -> None:
    """Re-send a committed row: `write_row` accepts equal bytes, raises Conflict on others."""
    try:
        store.write_row(index, row.load())
    except Conflict as exc:
        raise Conflict(
            f"differs from row {index} already committed in {store.url}; "
            "it is not the same trajectory"
        ) from exc


# ---------------------------------------------------------------------------- checkpoints
def _checkpoint_row(ckpt: Checkpoint, layout: Layout) -> _Row:
    def load() -> dict[str, npt.NDArray[Any]]:
        with Weights(ckpt.path) as weights:
            return flatten_state(weights, layout, weights.shapes, what=str(ckpt.path))

    return _Row(str(ckpt.path), load, ckpt.step, ckpt.epoch, ckpt.metrics)


def _check_rule(store: TrajectoryStore, folder: Path, rule: str) -> None:
    """An explicit rule must group theta0 as the existing store is grouped."""
    with Weights(folder) as weights:
        asked = build_layout(weights.shapes, rule)
    sizes = {g.name: g.size for g in asked.groups}
    if sizes != {g.name: g.size for g in store.layout.groups}:
        raise LayoutMismatch(
            f"store {store.url} is grouped by {store.layout.rule!r} "
            f"({len(store.layout.groups)} groups); rule {rule!r} gives {len(sizes)} other groups"
        )


def ingest_checkpoints(
    url: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    first_is_theta0: bool = False,
    rule: str = "auto",
    options: StoreOptions | None = None,
    verify_existing: bool = True,
    preflight: bool = True,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest `folder/checkpoint-*/` (ordered by step) into the store at `url`.

    Row 0 is theta0: the pre-trained model folder `base`, or, with `first_is_theta0`, the first
    checkpoint. A new store takes its layout from theta0 (in the model's parameter order when a
    `config.json` says which model it is); an existing store keeps its own, and every
    checkpoint must match it. Each checkpoint is read tensor by tensor (safetensors, or a
    memory-mapped `pytorch_model.bin`).
    """
    options = options or StoreOptions()
    if (base is None) == (not first_is_theta0):
        raise InvalidInput(
            "theta0 is ambiguous: give base (--base) or first_is_theta0 (--first-is-theta0)"
            if base is not None
            else "no theta0: give the pre-trained model folder as base (--base), "
            "or first_is_theta0 (--first-is-theta0)"
        )
    checkpoints = list_checkpoints(folder)
    if base is not None:
        weight_files(base)  # a missing base fails here, before anything else is read
        checkpoints = [Checkpoint(Path(base), step=0, epoch=0.0), *checkpoints]
    store = _existing(url, options)
    if store is not None:
        layout = store.layout
        if rule != "auto":
            _check_rule(store, checkpoints[0].path, rule)
    else:
        with _named(str(checkpoints[0].path)):
            layout = folder_layout(checkpoints[0].path, rule)
    rows = [_checkpoint_row(c, layout) for c in checkpoints]
    return _ingest(
        url,
        rows,
        layout,
        store,
        options,
        verify_existing=verify_existing,
        preflight=preflight,
        progress=progress,
    )


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
    store = _existing(url, options)
    layout = _arrays_layout(name, given, store, layout)
    rows = [_array_row(name, arrays, i, steps, epochs) for i in range(t)]
    return _ingest(
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
) -> _Row:
    return _Row(
        f"{name}[{i}]",
        lambda: {g: np.asarray(a[i]) for g, a in arrays.items()},
        step=None if steps is None else int(steps[i]),
        epoch=None if epochs is None else float(epochs[i]),
    )


def __getattr__(name: str) -> type[TrajectoryCallback]:
    # `from storage.ingest import TrajectoryCallback` without importing transformers eagerly.
    if name == "TrajectoryCallback":
        from storage.callback import TrajectoryCallback  # noqa: PLC0415 - needs transformers

        return TrajectoryCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IngestReport",
    "StoreOptions",
    "TrajectoryCallback",  # noqa: F822 - resolved lazily by __getattr__
    "flat_layout",
    "ingest_arrays",
    "ingest_checkpoints",
    "load_arrays",
]
