"""A real ingesting process that SIGKILLs itself at a chosen instant (the crash tests' child).

    python -m tests.storage.crash_writer STORE ARRAYS_DIR KILL

KILL is where to die, counted over the store's own writes:
  chunk:R:K       after the K-th chunk object of row R reached the store (mid-row)
  meta:N          after the N-th zarr.json write (array growth rewrites it per group)
  marker-tmp:R    with row R's marker written to its temporary file, before the rename
  marker:R        right after row R's marker is committed
  sleep:S         never by itself: sleep S seconds after every write event, for the parent to
                  kill it (tests/storage/crash_harness.kill_mid_write)
  event:N         at the N-th write event of any kind: after a chunk or metadata object reached
                  the store, or just before or just after a row marker's rename (the points
                  between which a crash can fall)
  count           run to completion and print `events N`, the number of such events
  none            run to completion
The hooks only observe the real LocalStore and os.replace calls and decide when to die.

On stdout the child reports its progress, for the parent to know what it killed: `ready` once
the hooks are in place, `event N` after each write event that it survives, and `done` once the
ingestion returned (a child that printed `done` was not killed mid-write).
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main(store: str, arrays: str, kill: str) -> None:
    from zarr.storage import LocalStore

    from storage.ingest import ingest_arrays

    kind, _, arg = kill.partition(":")
    counts = {"chunk": 0, "meta": 0, "event": 0}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def event() -> None:
        counts["event"] += 1
        if kind == "event" and counts["event"] == int(arg):
            die()
        print(f"event {counts['event']}", flush=True)
        if kind == "sleep":
            time.sleep(float(arg))

    real_set = LocalStore.set

    async def set_then_maybe_die(self, key, value):
        await real_set(self, key, value)
        event()
        if kind == "chunk":
            row, k = (int(x) for x in arg.split(":"))
            if f"/c/{row}/" in key:
                counts["chunk"] += 1
                if counts["chunk"] == k:
                    die()
        elif kind == "meta" and key.endswith("zarr.json"):
            counts["meta"] += 1
            if counts["meta"] == int(arg):
                die()

    real_replace = os.replace

    def replace_maybe_die(src, dst, *a, **kw):
        # zarr's own atomic chunk writes rename too: only row markers matter here.
        any_marker = "/_rows/" in str(dst)
        marker = kind.startswith("marker") and str(dst).endswith(f"_rows/{int(arg):08d}.json")
        if any_marker:
            event()
        if kind == "marker-tmp" and marker:
            die()
        real_replace(src, dst, *a, **kw)
        if any_marker:
            event()
        if kind == "marker" and marker:
            die()

    LocalStore.set = set_then_maybe_die
    os.replace = replace_maybe_die
    print("ready", flush=True)
    ingest_arrays(store, arrays)
    if kind == "count":
        print(f"events {counts['event']}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
