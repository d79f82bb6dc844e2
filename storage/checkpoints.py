"""Reading saved model weights tensor by tensor: checkpoint folders, safetensors and torch files.

A model folder holds `model.safetensors`, `pytorch_model.bin`, or a sharded variant with an
`*.index.json` weight map (what `save_pretrained` and the HF `Trainer` write). `Weights` opens
such a folder lazily: the names and shapes come from the file headers, and a tensor is read only
when asked for, so flattening a checkpoint costs one tensor plus the output rows. A training run
writes `checkpoint-<step>/` folders whose `trainer_state.json` gives the step, the epoch and the
log history the row metrics come from.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from storage.errors import InvalidInput, LayoutMismatch, NotFound, StorageError
from storage.layout import Layout, build_layout, layout_from_model, locate_params

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, f"{SAFETENSORS}.index.json", TORCH_BIN, f"{TORCH_BIN}.index.json")
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# safetensors dtype codes of floating-point tensors (integer buffers are not weights)
_FLOAT_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The weight file(s) of a model folder, preferring safetensors; shards in index order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"model folder {folder} does not exist")
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(f"{path} is not a readable weight index: {exc}") from exc
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise NotFound(f"{path} names shards that do not exist: {missing}")
        return [folder / s for s in shards]
    raise NotFound(f"{folder} holds no model weights (none of {', '.join(WEIGHT_FILES)})")


class Weights(Mapping[str, "torch.Tensor"]):
    """A model folder's tensors by name, read lazily; `shapes` lists the floating-point ones.

    Use as a context manager (or call `close()`): safetensors files stay memory-mapped while
    open. Values are torch tensors on the CPU.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        self._handles: list[Any] = []
        self._where: dict[str, Any] = {}  # name -> the handle or state dict holding it
        self.shapes: list[tuple[str, tuple[int, ...]]] = []
        try:
            for path in self.files:
                self._open(path)
        except Exception:
            self.close()
            raise

    def _open(self, path: Path) -> None:
        if path.suffix == ".safetensors":
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise StorageError(f"{path} is not a readable safetensors file: {exc}") from exc
            self._handles.append(handle)
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                info = handle.get_slice(name)
                self._where[name] = handle
                if info.get_dtype() in _FLOAT_CODES:
                    self.shapes.append((name, tuple(int(s) for s in info.get_shape())))
            return
        import torch  # noqa: PLC0415 - torch only for .bin files: storage stays torch-free on serving hosts

        try:
            # mmap keeps a large .bin file out of memory until a tensor is touched.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - the legacy (non-zip) format cannot be mapped
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise StorageError(f"{path} is not a readable torch state dict: {exc}") from exc
        if not isinstance(state, Mapping):
            raise StorageError(f"{path} holds a {type(state).__name__}, not a state dict")
        for name, value in state.items():
            self._where[name] = state
            if value.is_floating_point():
                self.shapes.append((name, tuple(value.shape)))

    def __getitem__(self, name: str) -> torch.Tensor:
        holder = self._where[name]
        tensor: torch.Tensor = holder[name] if isinstance(holder, dict) else holder.get_tensor(name)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        self._handles.clear()
        self._where.clear()

    def __enter__(self) -> Weights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def folder_layout(folder: str | os.PathLike[str], rule: str = "auto") -> Layout:
    """The layout of a model folder, with each group's parameters in the model's own order.

    Weight files list tensors sorted by name; a layout built from that order would get another
    hash than `layout_from_model` gives for the same model. So when the folder has a
    `config.json` naming a transformers architecture, the model is built on the meta device (no
    memory, no weights) to read its parameter order. Otherwise the file order is used.
    """
    with Weights(folder) as weights:
        shapes = list(weights.shapes)
    from_file = build_layout(shapes, rule)
    in_model_order = _model_order_layout(Path(folder), from_file.rule)
    if in_model_order is None:
        return from_file
    try:
        locate_params(in_model_order, shapes, str(folder))
    except LayoutMismatch as exc:
        log.warning("config.json of %s does not describe its weights (%s)", folder, exc)
        return from_file
    return in_model_order


def _model_order_layout(folder: Path, rule: str) -> Layout | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        import torch  # noqa: PLC0415 - the meta-device model: storage stays torch-free
        import transformers  # noqa: PLC0415 - optional (finetune extra)

        config = transformers.AutoConfig.from_pretrained(str(folder))
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        with torch.device("meta"):
            model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
        return layout_from_model(model, rule)
    except Exception as exc:  # noqa: BLE001 - any failure here only costs the model order
        log.info("could not build %s on the meta device (%s); using file order", folder, exc)
        return None


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint folder and the trainer's record of it."""

    path: Path
    step: int | None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def metrics_at(log_history: Sequence[Mapping[str, Any]], step: int | None) -> dict[str, float]:
    """Numeric values the trainer logged at exactly `step` (training loss, eval metrics, ...)."""
    out: dict[str, float] = {}
    for entry in log_history or []:
        if entry.get("step") != step:
            continue
        for key, value in entry.items():
            if key in ("step", "epoch") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                out[key] = float(value)
    return out


def read_checkpoint(folder: str | os.PathLike[str], step: int | None = None) -> Checkpoint:
    """A checkpoint folder with the step, epoch and metrics of its `trainer_state.json`."""
    folder = Path(folder)
    weight_files(folder)  # fails early, with the folder's name, when there are no weights
    state_path = folder / "trainer_state.json"
    epoch, metrics = None, {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError) as exc:
            raise StorageError(f"{state_path} is not valid JSON: {exc}") from exc
        step = step if step is not None else state.get("global_step")
        epoch = state.get("epoch")
        metrics = metrics_at(state.get("log_history", []), step)
    return Checkpoint(path=folder, step=step, epoch=epoch, metrics=metrics)


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Checkpoint]:
    """The `checkpoint-<step>` folders under `folder`, ordered by step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"checkpoint folder {folder} does not exist")
    found = []
    for child in folder.iterdir():
        m = CHECKPOINT_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    if not found:
        raise InvalidInput(f"{folder} has no checkpoint-<step> folders")
    return [read_checkpoint(path, step) for step, path in sorted(found)]
