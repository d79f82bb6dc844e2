"""DIR/runs.jsonl: one JSON object per finished run, appended and fsynced as each run ends.

This file is what makes the experiment resumable: a run whose id is in it is never trained
again. A crash can cut the last line short; that line was never committed, so reading drops it
(and the file is trimmed back to its last complete line before anything is appended).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNS_FILE = "runs.jsonl"


class Ledger:
    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / RUNS_FILE
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            log.warning("%s ends in a partial line (an interrupted write); dropping it", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        for n, line in enumerate(complete.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON; ignoring it", self.path, n)
                continue
            self.records[record["id"]] = record

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self.records.get(run_id)

    def append(self, record: dict[str, Any]) -> None:
        """Commit one finished run: a single write of one line, flushed and fsynced."""
        if "id" not in record:
            raise ValueError("a run record needs an id")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=_plain) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[record["id"]] = record


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_runs(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return list(Ledger(out_dir))
