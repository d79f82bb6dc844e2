"""What one registry app holds: settings, database, store root, locks. Built by `create_app`."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field

from services.db import Database
from services.settings import Settings
from storage.objects import Location


class KeyedLocks:
    """One lock per key (a task's trajectory, a basis' aliases), created on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


@dataclass
class Registry:
    settings: Settings
    db: Database
    root: Location
    locks: KeyedLocks = field(default_factory=KeyedLocks)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> Registry:
        settings.prepare()
        db = db or Database(settings.resolved_database_url)
        db.migrate(allow_upgrade=settings.migrate_on_start)
        root = Location.from_url(settings.resolved_store_root, settings.storage_options)
        return cls(settings=settings, db=db, root=root)

    def trajectory_url(self, task_id: str) -> str:
        return self.root.child("trajectories", task_id).url

    def staging(self, task_id: str) -> Location:
        return self.root.child("uploads", task_id)

    def basis_url(self, task_id: str, kind: str, version: int) -> str:
        return self.root.child("bases", task_id, kind, f"v{version}").url
