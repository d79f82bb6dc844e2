"""Staged parts on disk, under `<root>/uploads/<task>/<row>/<group>/<start>-<stop>`: list,
hash, compare, write (whole or not at all) and drop them.

Staged parts are a resumable cache of an upload: a part lost to a crash is sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid

from services.context import Registry
from services.streaming import SpooledBody
from storage.errors import NotFound, storage_error
from storage.objects import Location

_PART = re.compile(r"^(\d{12})-(\d{12})$")
BLOCK_BYTES = 1 << 20  # a spooled part is read in blocks of this many bytes (whole float32s)


def row_dir(row: int) -> str:
    return f"{row:08d}"


def part_name(start: int, stop: int) -> str:
    return f"{start:012d}-{stop:012d}"


def staged_parts(reg: Registry, task_id: str, row: int | None = None) -> dict:
    """{row: {group: [(start, stop), ...]}} of the parts received and not yet committed."""
    loc = reg.staging(task_id)
    rows = [row_dir(row)] if row is not None else loc.list()
    out: dict[int, dict[str, list[tuple[int, int]]]] = {}
    for r in rows:
        if not r.isdigit():
            continue
        groups = {}
        for g in loc.list(r):
            spans = []
            for name in loc.list(r, g):
                m = _PART.fullmatch(name)
                if m:
                    spans.append((int(m.group(1)), int(m.group(2))))
            if spans:
                groups[g] = sorted(spans)
        if groups:
            out[int(r)] = groups
    return out


def staged_digests(reg: Registry, task_id: str, row: int) -> dict[str, list[dict]]:
    """{group: [{offset, count, sha256}, ...]} of row `row`'s staged parts: what an
    interrupted upload resumes from, sending only the parts that are not staged with its bytes.
    Reads every staged byte of the row once (a part dropped meanwhile is left out)."""
    loc, name = reg.staging(task_id), row_dir(row)
    out: dict[str, list[dict]] = {}
    for group, spans in staged_parts(reg, task_id, row).get(row, {}).items():
        for start, stop in spans:
            h = hashlib.sha256()
            try:
                with loc.fs.open(loc.path(name, group, part_name(start, stop)), "rb") as f:
                    for block in iter(lambda f=f: f.read(BLOCK_BYTES), b""):
                        h.update(block)
            except FileNotFoundError:
                continue
            part = {"offset": start, "count": stop - start, "sha256": h.hexdigest()}
            out.setdefault(group, []).append(part)
    return out


def same_as_staged(loc: Location, part: SpooledBody, *parts: str) -> bool:
    """Whether the staged file at `parts` holds exactly the spooled part's bytes."""
    try:
        with loc.fs.open(loc.path(*parts), "rb") as staged:
            same = all(staged.read(len(b)) == b for b in part.blocks(BLOCK_BYTES))
            return same and staged.read(1) == b""
    except FileNotFoundError as exc:
        raise NotFound(f"staged part {'/'.join(parts)} disappeared; send it again") from exc


def stage(loc: Location, part: SpooledBody, *parts: str) -> None:
    """Copy a spooled part into staging; the part appears whole or not at all."""
    try:
        if loc.is_local:
            _stage_local(part, loc.path(*parts))
        else:
            # The backend's own upload of a local file: one all-or-nothing object (S3, GCS...).
            loc.fs.put_file(part.path, loc.path(*parts))
    except OSError as exc:
        raise storage_error(f"could not stage part {'/'.join(parts)}", exc) from exc


def _stage_local(part: SpooledBody, target: str) -> None:
    # Written beside the target, synced and renamed over it: a crash leaves a whole part or a
    # `.tmp-` file that staged_parts does not list (the row's drop removes it). A rename lost
    # to a power cut only means the part is sent again: staged parts are a resumable cache.
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            for block in part.blocks(BLOCK_BYTES):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(target))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_row(reg: Registry, task_id: str, row: int) -> None:
    with reg.locks(("stage", task_id, row)):
        reg.staging(task_id).delete(row_dir(row), recursive=True)
