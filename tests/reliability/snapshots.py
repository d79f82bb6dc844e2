"""Before/after pictures of everything a registry or a store holds: "writes nothing" is checked
by comparing them, not by trusting a status code."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy import select

from services.models import Base

# SQLite's own files change on reads (WAL checkpoints); the rows are compared instead.
_SKIP_SUFFIXES = (".db", ".db-wal", ".db-shm", ".log", ".lock")


def files(*roots: str | os.PathLike) -> dict[str, str]:
    """{path: sha256} of every file under the roots (missing roots are empty)."""
    out = {}
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                if name.endswith(_SKIP_SUFFIXES):
                    continue
                path = Path(dirpath) / name
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rows(db) -> dict[str, list[tuple]]:
    """Every row of every registry table, as tuples of strings."""
    out = {}
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            out[table.name] = sorted(
                tuple(str(v) for v in r) for r in conn.execute(select(table)).all()
            )
    return out


def registry(app, *extra_roots: str | os.PathLike) -> tuple[dict, dict]:
    """(database rows, files under the data dir and `extra_roots`) of an app."""
    reg = app.state.registry
    return rows(reg.db), files(reg.settings.data_dir, *extra_roots)
