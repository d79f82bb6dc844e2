"""What "the database is consistent" means for a registry, checked against the store itself.

Used after every fault: nothing is `ready` unless its manifest is committed, every layer's bytes
match the sha256 the database serves, and the database agrees with the manifest; a finished job
agrees with its basis and a failed one carries a reason; aliases name ready versions and
`latest` the newest ready one; trajectory row counts never run ahead of the store's committed
rows, and staged upload parts exist only for rows that are not committed.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select

from services.db import Database
from services.models import Alias, Basis, Job, Trajectory
from services.settings import Settings
from storage.basis import BasisStore
from storage.trajectory import TrajectoryStore

_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_registry(data_dir: Path, *, settled: bool = True) -> dict:
    """Assert the invariants of the registry under `data_dir`; returns counts for reporting.

    settled: no job may be pending or running (call after every job has ended); with
    settled=False jobs may still be queued (right after a crash).
    """
    settings = Settings(data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    counts = {"ready": 0, "failed": 0, "jobs": 0, "rows": 0}
    try:
        with db.session() as s:
            bases = s.scalars(select(Basis)).all()
            jobs = s.scalars(select(Job)).all()
            for b in bases:
                _check_basis(b)
                counts[b.status] = counts.get(b.status, 0) + 1
            by_basis = {}
            for j in jobs:
                by_basis.setdefault(j.basis_id, []).append(j)
                if settled:
                    assert j.status in ("succeeded", "failed", "cancelled"), (j.id, j.status)
                if j.status in ("failed", "cancelled"):
                    assert j.error and j.error_code, f"job {j.id} {j.status} without a reason"
            for b in bases:
                last = max(by_basis.get(b.id, []), key=lambda j: j.id, default=None)
                if last is not None and last.status == "succeeded":
                    assert b.status == "ready", (b.id, b.status)
                if b.status == "ready":
                    assert last is not None and last.status == "succeeded", (b.id, last)
                if last is not None and last.status in ("failed", "cancelled"):
                    assert b.status == "failed", (b.id, b.status)
            counts["jobs"] = len(jobs)
            ready = {(b.task_id, b.kind, b.version) for b in bases if b.status == "ready"}
            for a in s.scalars(select(Alias)).all():
                assert (a.task_id, a.kind, a.version) in ready, f"alias {a.name} -> unready"
                if a.name == "latest":
                    newest = max(v for t, k, v in ready if (t, k) == (a.task_id, a.kind))
                    assert a.version == newest, (a.task_id, a.kind, a.version, newest)
            for t in s.scalars(select(Trajectory)).all():
                store = TrajectoryStore.open(t.url)
                assert t.rows <= store.num_rows, (t.task_id, t.rows, store.num_rows)
                assert store.verify() == [], t.task_id
                counts["rows"] += store.num_rows
                staging = Path(settings.resolved_store_root) / "uploads" / t.task_id
                if staging.exists():
                    staged = [int(p.name) for p in staging.iterdir() if p.name.isdigit()]
                    assert all(r >= store.num_rows for r in staged), (staged, store.num_rows)
    finally:
        db.dispose()
    return counts


def _check_basis(b: Basis) -> None:
    if b.status == "ready":
        assert b.layers and b.ready_at, f"basis {b.id} ready without layers"
        assert all(_SHA.fullmatch(i["sha256"]) for i in b.layers), b.id
        store = BasisStore.open(b.url)  # the manifest exists: the store was committed
        assert [i.to_dict() for i in store.layers.values()] == b.layers, b.id
        assert store.verify() == [], f"basis {b.id}: {store.verify()}"
    elif b.status == "failed":
        assert b.error, f"basis {b.id} failed without a reason"
        assert not Path(b.url).exists(), f"failed basis {b.id} left files at {b.url}"
    else:  # pending or running: nothing about it is served yet
        assert b.layers is None and b.ready_at is None, f"basis {b.id} {b.status} has layers"
