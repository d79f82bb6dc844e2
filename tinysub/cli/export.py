"""`tinysub export`: a finished subspace run as a PEFT adapter folder or a merged model."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from storage.errors import InvalidInput
from tinysub.cli.common import console


def export_cmd(
    run: Annotated[str, typer.Argument(help="A finished subspace run folder (its --out).")],
    peft: Annotated[
        str | None,
        typer.Option(
            "--peft",
            help="Write a PEFT adapter folder here (theta and a sha256 reference to V; load it "
            "with PeftModel.from_pretrained after `import worker.finetune.peft_adapter`).",
        ),
    ] = None,
    merged: Annotated[
        str | None,
        typer.Option(
            "--merged",
            help="Write the merged model here (theta0 + V theta in its weights), as "
            "save_pretrained does, with its tokenizer.",
        ),
    ] = None,
    basis: Annotated[
        str | None,
        typer.Option(
            "--basis",
            help="A local copy of the run's basis (default: the path or registry the run "
            "recorded; its sha256 must match).",
        ),
    ] = None,
) -> None:
    """Export a finished subspace run: a PEFT adapter (--peft) and/or a merged model (--merged)."""
    # torch, transformers and peft take seconds to import: only when this command runs.
    from worker.finetune.peft_export import export_peft  # noqa: PLC0415 - CLI start-up
    from worker.finetune.restore import restore  # noqa: PLC0415 - CLI start-up

    if not peft and not merged:
        raise InvalidInput("say what to write: --peft DIR, --merged DIR, or both")
    model, tokenizer, record = restore(run, basis=basis)
    if peft:
        export_peft(model, peft, base_model_name_or_path=record.get("model"))
        console.print(f"PEFT adapter written to {peft}")
    if merged:
        os.makedirs(merged, exist_ok=True)
        model.merge().save_pretrained(merged)
        if tokenizer is not None:
            tokenizer.save_pretrained(merged)
        console.print(f"merged model written to {merged}")
