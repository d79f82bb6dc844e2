"""`tinysub ingest SOURCE STORE`: fill a trajectory store from checkpoints or numpy arrays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from storage.checkpoints import folder_layout
from storage.errors import InvalidInput, NotFound
from storage.ingest import StoreOptions, ingest_arrays, ingest_checkpoints
from storage.trajectory import DEFAULT_CHUNK_COLS
from tinysub.cli.common import console, phase_progress, print_json

SOURCES = ("auto", "checkpoints", "arrays")


def _source_kind(source: Path, kind: str) -> str:
    if kind not in SOURCES:
        raise InvalidInput(f"--from {kind!r} is not one of {list(SOURCES)}")
    if kind != "auto":
        return kind
    if not source.exists():
        raise NotFound(f"source {source} does not exist")
    if source.is_dir() and any(source.glob("checkpoint-*")):
        return "checkpoints"
    if source.suffix in (".npy", ".npz") or (source.is_dir() and any(source.glob("*.npy"))):
        return "arrays"
    raise InvalidInput(
        f"{source} holds neither checkpoint-<step> folders nor .npy/.npz arrays; "
        "pass --from to say which it is"
    )


def _storage_options(pairs: list[str]) -> dict | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--storage-option {pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out or None


def ingest_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="A folder of checkpoint-<step>/ folders, a .npz or .npy file, or a folder of "
            ".npy files (one (rows, D) array per group)."
        ),
    ],
    store: Annotated[str, typer.Argument(help="Trajectory store: a path or fsspec URL.")],
    kind: Annotated[
        str, typer.Option("--from", help="auto | checkpoints | arrays (what SOURCE is).")
    ] = "auto",
    base: Annotated[
        Path | None,
        typer.Option(help="Pre-trained model folder: theta0, row 0 (checkpoints)."),
    ] = None,
    first_is_theta0: Annotated[
        bool, typer.Option(help="Use the first checkpoint as theta0 instead of --base.")
    ] = False,
    layout_from: Annotated[
        Path | None,
        typer.Option(help="Model folder whose layout the arrays follow (arrays, new store)."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model name recorded in a new store.")] = "",
    revision: Annotated[str | None, typer.Option(help="Model revision recorded.")] = None,
    rule: Annotated[
        str,
        typer.Option(
            help="Grouping rule: auto, bert, roberta, mpnet, gpt2, llama, global, "
            "global:<rule>, regex:<pattern>."
        ),  # fmt: skip
    ] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16 (new store).")] = (
        "float32"
    ),
    chunk_cols: Annotated[
        int, typer.Option(help="Columns per chunk (new store).")
    ] = DEFAULT_CHUNK_COLS,
    storage_option: Annotated[
        list[str] | None,
        typer.Option("--storage-option", help="fsspec option KEY=VALUE for a URL (repeatable)."),
    ] = None,
    verify_existing: Annotated[
        bool,
        typer.Option(help="Re-read rows the store already holds and check their sha256."),
    ] = True,
    preflight: Annotated[
        bool,
        typer.Option(help="Check every new row before writing any (bad input writes nothing)."),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Ingest checkpoints or arrays into a trajectory store (resumable: re-run to continue)."""
    # Long by nature: a typer command; its flags, then the steps they drive, top to bottom.
    what = _source_kind(source, kind)
    options = StoreOptions(
        model_name=model,
        revision=revision,
        dtype=dtype,
        chunk_cols=chunk_cols,
        storage_options=_storage_options(storage_option or []),
    )
    common = dict(options=options, verify_existing=verify_existing, preflight=preflight)
    with phase_progress(not quiet and not json_out) as progress:
        if what == "checkpoints":
            if layout_from is not None:
                raise InvalidInput("--layout-from is for arrays; checkpoints carry their layout")
            report = ingest_checkpoints(
                store,
                source,
                base=base,
                first_is_theta0=first_is_theta0,
                rule=rule,
                progress=progress,
                **common,
            )
        else:
            if base is not None or first_is_theta0:
                raise InvalidInput("arrays hold theta0 as their row 0; drop --base")
            layout = None
            if layout_from is not None:
                layout = folder_layout(layout_from, rule)
            report = ingest_arrays(store, source, layout=layout, progress=progress, **common)
    if json_out:
        print_json(report.to_dict())
        return
    console.print(
        f"{report.url}: {report.rows} rows ({report.written} written, {report.verified} "
        f"verified, {report.skipped} skipped), layout {report.layout_hash[:12]}, "
        f"{report.seconds:.2f}s",
        soft_wrap=True,
        highlight=False,
    )
