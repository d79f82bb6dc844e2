"""Array conversions shared by the stores: storage dtypes, tensors to numpy, flattening."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from storage.errors import InvalidInput, LayoutMismatch
from storage.layout import Layout, locate_params

# bfloat16 has no numpy dtype: it is stored as its raw upper 16 bits in uint16 chunks.
STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}


def check_dtype(dtype: str) -> str:
    if dtype not in STORAGE_DTYPES:
        raise InvalidInput(
            f"storage dtype {dtype!r} is not supported; use one of {sorted(STORAGE_DTYPES)}"
        )
    return dtype


def to_numpy(value: Any) -> npt.NDArray[Any]:
    """A torch tensor or array-like as a numpy array (float32 for bfloat16 tensors)."""
    if hasattr(value, "detach"):
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return cast(npt.NDArray[Any], value.cpu().numpy())
    return np.asarray(value)


def encode(values: npt.NDArray[Any], dtype: str) -> npt.NDArray[Any]:
    """Finite float32 values -> the array written to zarr for storage dtype `dtype`.

    Raises `InvalidInput` when a value overflows the storage dtype (|x| > 65504 in float16):
    a stored Inf would turn every basis computed from the row into NaN.
    """
    if dtype == "float32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            # Any: the float16 result here, the uint16 bits of bfloat16 below.
            out: npt.NDArray[Any] = values.astype(np.float16)
        finite = np.isfinite(out)
    else:
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        # Round to nearest even on the 16 bits that are dropped (NaN is rejected before this).
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        out = (rounded >> np.uint32(16)).astype(np.uint16)
        finite = (out & np.uint16(0x7F80)) != np.uint16(0x7F80)
    if not finite.all():
        bad = int(np.count_nonzero(~finite))
        raise InvalidInput(
            f"{bad} values overflow {dtype} (largest {float(np.abs(values).max()):.4g}); "
            "store them as float32"
        )
    return out


def decode(stored: npt.NDArray[Any], dtype: str) -> npt.NDArray[np.float32]:
    """The zarr array for storage dtype `dtype` -> float32 values."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return stored.astype(np.float32, copy=False)


def digest(values: npt.NDArray[Any]) -> str:
    """sha256 of an array's C-order bytes: the identity of a stored row or layer."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(values).data.cast("B"))
    return h.hexdigest()


def float_shapes(state: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the floating-point entries of a state dict, in its order."""
    out = []
    for name, value in state.items():
        # Integer buffers such as position_ids are not weights.
        if "float" in str(getattr(value, "dtype", "")):
            out.append((name, tuple(int(s) for s in value.shape)))
    return out


def flatten_state(
    state: Mapping[str, Any],
    layout: Layout,
    shapes: Iterable[tuple[str, tuple[int, ...]]] | None = None,
    what: str = "checkpoint",
) -> dict[str, npt.NDArray[np.float32]]:
    """Flatten a state dict into one float32 vector per layout group, in layout order.

    The state dict may carry another class prefix (`bert.`) and another parameter order than
    the layout was built from; it must have the same groups, names and shapes. `shapes` lists
    its (name, shape) pairs when `state` loads tensors lazily (only the layout's parameters are
    then read, one at a time). Peak memory: the output vectors plus one tensor.
    """
    names = locate_params(layout, float_shapes(state) if shapes is None else shapes, what)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for group in layout.groups:
        vec = np.empty(group.size, dtype=np.float32)  # (D_group,)
        for spec, full in zip(group.params, names[group.name], strict=True):
            vec[spec.offset : spec.offset + spec.numel] = to_numpy(state[full]).reshape(-1)
        out[group.name] = vec
    return out


def check_row(
    vectors: Mapping[str, npt.NDArray[Any]], layout: Layout
) -> dict[str, npt.NDArray[np.float32]]:
    """Validate one row (group -> flat vector): every group present, right size, finite."""
    missing = [g for g in layout.group_names if g not in vectors]
    extra = [g for g in vectors if g not in set(layout.group_names)]
    if missing or extra:
        raise LayoutMismatch(
            f"row groups do not match the layout: missing {missing}, unexpected {extra}"
        )
    out = {}
    for group in layout.groups:
        vec = np.asarray(to_numpy(vectors[group.name]), dtype=np.float32).reshape(-1)
        if vec.size != group.size:
            raise LayoutMismatch(
                f"group {group.name!r} has {vec.size} values; the layout needs {group.size}"
            )
        finite = np.isfinite(vec)
        if not finite.all():
            bad = int(np.count_nonzero(~finite))
            where = [
                p.name for p in group.params if not finite[p.offset : p.offset + p.numel].all()
            ]
            raise InvalidInput(
                f"group {group.name!r} has {bad} NaN or Inf values (in {', '.join(where[:3])}"
                f"{', ...' if len(where) > 3 else ''}); nothing was written"
            )
        out[group.name] = vec
    return out
