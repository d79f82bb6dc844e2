"""`make test`'s file-by-file scheduling (`-n 2 --dist loadfile`), safe when a worker dies.

pytest-xdist 3.8's LoadFileScheduling deadlocks after a worker process dies mid-run: the dead
worker's whole workload goes back on the queue, files it had finished included, and a worker
handed a finished file gets an empty command that never completes, so it is never given more
work nor told to stop; a replacement worker handed a file with one test left waits forever for a
second (pytest-xdist issues 1378 and 1327). The suite then hangs at ~98% with idle workers until
CI's limit, which is how a single crashed test cost a whole CI run. Here:

- a dead worker's files go back on the queue without their finished tests and without the test
  it died in (xdist has reported that one as failed; running it again would only crash the
  next worker too, as pytest-xdist PR 1371 argues);
- a worker is topped up until it holds at least two tests (an xdist worker runs a test only once
  it knows the next one, or that there is none), and once the queue is empty every worker is
  told to stop after what it holds.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadFileScheduling


class CrashSafeLoadFileScheduling(LoadFileScheduling):
    def remove_node(self, node: Any) -> str | None:
        workload = self.assigned_work.pop(node)
        if not self._pending_of(workload):
            return None
        crashitem = next(
            nodeid for unit in workload.values() for nodeid, done in unit.items() if not done
        )
        for scope, unit in workload.items():
            left = {nodeid: done or nodeid == crashitem for nodeid, done in unit.items()}
            if not all(left.values()):
                self.workqueue[scope] = left
        for other in list(self.assigned_work):
            self._reschedule(other)
        return crashitem

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        # The stock rule (one more file once two tests or fewer are left), then enough files
        # for two tests, where the queue has them.
        if self.workqueue and self._pending_of(self.assigned_work[node]) <= 2:
            self._assign_work_unit(node)
        while self.workqueue and self._pending_of(self.assigned_work[node]) < 2:
            self._assign_work_unit(node)
        if not self.workqueue:
            for other in list(self.assigned_work):
                if not other.shutting_down:
                    other.shutdown()

    def _assign_work_unit(self, node: Any) -> None:
        # Never send an empty command: a file with nothing left is dropped from the queue.
        while self.workqueue:
            scope, unit = next(iter(self.workqueue.items()))
            if not all(unit.values()):
                super()._assign_work_unit(node)
                return
            del self.workqueue[scope]


def make_scheduler(config: Any, log: Any) -> Any:
    """The `pytest_xdist_make_scheduler` hook's answer: ours for loadfile, else xdist's own."""
    if config.getvalue("dist") == "loadfile":
        return CrashSafeLoadFileScheduling(config, log)
    return None
