"""One job-running process per database: the runner lock.

Several API processes may share one database (PostgreSQL in deployment); every one of them
serves requests, but only the holder of this lock runs jobs. That is what makes start-up recovery
simple and safe: the holder is the only runner, so a job left `running` when it takes the lock
belongs to a runner that is gone, and it re-queues all of them at once, with no wait for a lease
to expire. The others stand by and take over within `job_poll_seconds` of the holder's death.

- PostgreSQL: a session-level advisory lock on a connection of its own; the server releases it
  when that connection ends, however the process dies.
- SQLite (one host by construction): an exclusive `flock` on a file beside the database, which
  the kernel releases when the process dies.
- In-memory SQLite: one process by construction; the lock is always held.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from services.db import Database

log = logging.getLogger(__name__)


def advisory_key(database: str) -> int:
    """A 63-bit key per database (advisory locks are server-wide: two registries in two
    databases of one server must not share a runner), derived from a name so that it is
    unlikely to clash with another application's advisory locks."""
    digest = hashlib.sha256(f"tinysub.job-runner:{database}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class RunnerLock:
    """Held by at most one process per database. Not re-entrant; one per JobRunner."""

    def __init__(self, db: Database) -> None:
        self.db = db
        url = make_url(db.url)
        self._postgres = url.get_backend_name() == "postgresql"
        self._key = advisory_key(url.database or "")
        self._path: Path | None = None
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            self._path = Path(f"{url.database}.runner.lock")
        self._fd: int | None = None
        self._conn: Connection | None = None
        self._memory_held = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None or self._memory_held

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this process now holds it."""
        if self.held:
            return True
        if self._postgres:
            conn = self.db.engine.connect()
            try:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                ).scalar()
                conn.commit()  # the lock is session-level: it outlives the transaction
            except BaseException:
                conn.close()
                raise
            if got:
                self._conn = conn
            else:
                conn.close()
            return bool(got)
        if self._path is None:
            self._memory_held = True
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        """False once the lock was lost (PostgreSQL: its connection broke); then it is released
        on this side and must be acquired again."""
        if self._conn is None:
            return self.held
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:  # noqa: BLE001 - any failure means the session (and lock) may be gone
            log.warning("the job runner lock's database connection broke", exc_info=True)
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                conn.commit()
            except Exception:  # noqa: BLE001 - closing the session releases it anyway
                pass
            finally:
                conn.invalidate()  # never return a lock-holding session to the pool
                conn.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock
        self._memory_held = False
