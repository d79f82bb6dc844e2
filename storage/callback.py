"""`TrajectoryCallback`: a `transformers.TrainerCallback` that streams checkpoints into a store.

No checkpoint file touches the disk: at train begin the callback writes theta0 (row 0), then a
row every epoch or every N optimizer steps, flattened straight from the live model's parameters
(one row of float32 in memory at a time). Metrics the trainer logs at a row's step (loss,
learning rate, eval metrics, which the trainer logs *after* the step ends) are merged into that
row's marker as they arrive.

Resuming: when the store already holds rows, theta0 is not written again (on a fresh start it is
re-sent, and must be byte-identical to row 0, else `Conflict`), and steps the store already holds
are skipped, so resuming a `Trainer` from an earlier checkpoint never duplicates a step.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from storage.arrays import flatten_state
from storage.checkpoints import metrics_at
from storage.errors import InvalidInput
from storage.layout import Layout, layout_from_model, locate_params
from storage.trajectory import DEFAULT_CHUNK_COLS, TrajectoryStore

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from transformers.trainer_callback import TrainerControl, TrainerState
    from transformers.training_args import TrainingArguments

log = logging.getLogger(__name__)


SHARDED = (
    "the trajectory callback records whole parameters on the main process, but {how} shards "
    "them across processes (gathering each row would need every rank at once). Record with "
    "DDP, ZeRO-1/2 or one device, or save full-state checkpoints and ingest the folders "
    "(`tinysub ingest RUN_DIR STORE`)"
)


def refuse_sharded(args: Any, model: torch.nn.Module | None) -> None:
    """InvalidInput when the Trainer shards parameters (FSDP, DeepSpeed ZeRO-3, DTensor):
    the callback would otherwise fail on shapes, or record one shard as if it were the model."""
    if getattr(args, "fsdp", None):
        raise InvalidInput(SHARDED.format(how="FSDP"))
    for _, p in model.named_parameters() if model is not None else ():
        if hasattr(p, "ds_numel") or hasattr(p, "ds_id"):
            raise InvalidInput(SHARDED.format(how="DeepSpeed ZeRO-3"))
        if type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor":
            raise InvalidInput(SHARDED.format(how="a DTensor (FSDP2 / tensor parallel) layout"))


class TrajectoryCallback(TrainerCallback):
    """Write the fine-tuning trajectory of a `Trainer`'s model into a trajectory store.

    Parameters
    ----------
    store:
        A store path or fsspec URL (created at train begin if missing), or an open writable
        `TrajectoryStore`.
    every:
        `"epoch"` for a row at the end of every epoch, or an int N for a row every N optimizer
        steps. The last step of training always gets a row.
    rule:
        Grouping rule for a new store (`auto`, `bert`, `gpt2`, `llama`, `global`, `regex:...`).
    model_name, revision, dtype, chunk_cols, storage_options:
        Recorded in / used for a new store.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | TrajectoryStore,
        *,
        every: int | str = "epoch",
        rule: str = "auto",
        model_name: str | None = None,
        revision: str | None = None,
        dtype: str = "float32",
        chunk_cols: int = DEFAULT_CHUNK_COLS,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if every != "epoch" and not (isinstance(every, int) and every > 0):
            raise InvalidInput(
                f"every must be 'epoch' or a positive number of steps, not {every!r}"
            )
        self.every = every
        self.rule = rule
        self.model_name = model_name
        self.revision = revision
        self.dtype = dtype
        self.chunk_cols = chunk_cols
        self.storage_options = storage_options
        self._target = store
        self.store: TrajectoryStore | None = store if isinstance(store, TrajectoryStore) else None
        self._layout: Layout | None = None

    # ------------------------------------------------------------------------------ helpers
    def _row(self, model: torch.nn.Module | None) -> dict[str, npt.NDArray[np.float32]]:
        assert model is not None, "the Trainer passes its model to every event"
        assert self._layout is not None, "on_train_begin opens the store before any row"
        params = dict(model.named_parameters())
        return flatten_state(
            params, self._layout, [(n, tuple(p.shape)) for n, p in params.items()], what="model"
        )

    def _open(self, model: torch.nn.Module | None) -> TrajectoryStore:
        assert model is not None, "the Trainer passes its model to every event"
        if self.store is None:
            target = self._target
            # A store given open is self.store from the start: only a path or URL gets here.
            assert not isinstance(target, TrajectoryStore)
            if TrajectoryStore.exists(target, self.storage_options):
                self.store = TrajectoryStore.open(
                    target, read_only=False, storage_options=self.storage_options
                )
            else:
                name = self.model_name or getattr(
                    getattr(model, "config", None), "_name_or_path", ""
                )
                self.store = TrajectoryStore.create(
                    target,
                    layout_from_model(model, self.rule),
                    model_name=name or "",
                    revision=self.revision,
                    dtype=self.dtype,
                    chunk_cols=self.chunk_cols,
                    storage_options=self.storage_options,
                )
        self.store.refresh()
        self._layout = self.store.layout
        # Fails now, with the differences named, if the model is not the store's model.
        locate_params(
            self._layout, [(n, tuple(p.shape)) for n, p in model.named_parameters()], "model"
        )
        return self.store

    @property
    def _last_step(self) -> int | None:
        rows = self.store.rows if self.store is not None else []
        steps = [r.step for r in rows if r.step is not None]
        return max(steps) if steps else None

    def _write(
        self, store: TrajectoryStore, state: TrainerState, model: torch.nn.Module | None
    ) -> None:
        last = self._last_step
        if last is not None and state.global_step <= last:
            if state.global_step < last:
                log.warning(
                    "step %d is older than row step %d in %s; not written again",
                    state.global_step,
                    last,
                    store.url,
                )
            return
        index = store.append(
            self._row(model),
            step=state.global_step,
            epoch=state.epoch,
            metrics=metrics_at(state.log_history, state.global_step),
        )
        log.info("trajectory row %d (step %d) -> %s", index, state.global_step, store.url)

    # ------------------------------------------------------------------------------- events
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        refuse_sharded(args, model)  # on every rank, so that all of them stop
        if not state.is_world_process_zero:
            return
        store = self._open(model)
        if store.num_rows == 0:
            store.append(self._row(model), step=state.global_step, epoch=state.epoch or 0.0)
        elif state.global_step == 0:
            # A fresh run into a store that has rows: same starting point, or refuse.
            store.write_row(0, self._row(model))

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or self.store is None:
            return
        last_step = state.max_steps and state.global_step >= state.max_steps
        # An int is a number of steps (__init__ accepts no other value but "epoch").
        if (isinstance(self.every, int) and state.global_step % self.every == 0) or last_step:
            self._write(self.store, state, model)

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or self.store is None:
            return
        if self.every == "epoch":
            self._write(self.store, state, model)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # The trainer logs a step's loss and eval metrics after the step's row was written.
        if not state.is_world_process_zero or self.store is None or not self.store.rows:
            return
        last = self.store.rows[-1]
        if last.step != state.global_step:
            return
        metrics = metrics_at([{**(logs or {}), "step": state.global_step}], state.global_step)
        if metrics:
            self.store.annotate(last.index, metrics)
