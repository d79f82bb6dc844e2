"""runs.jsonl is the experiment's commit log: what is in it is never trained again, and a
write cut short by a crash loses only that run."""

from __future__ import annotations

import json

from experiments.ledger import RUNS_FILE, Ledger, read_runs


def test_append_and_reopen(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append({"id": "a", "score": 0.5})
    ledger.append({"id": "b", "score": 0.25})
    again = Ledger(tmp_path)
    assert "a" in again and "b" in again and len(again) == 2
    assert again.get("b")["score"] == 0.25
    assert [r["id"] for r in read_runs(tmp_path)] == ["a", "b"]


def test_a_partial_last_line_is_dropped_and_trimmed(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append({"id": "a", "score": 0.5})
    path = tmp_path / RUNS_FILE
    with open(path, "a") as f:
        f.write('{"id": "b", "sco')  # the process died mid-write
    again = Ledger(tmp_path)
    assert list(again.records) == ["a"]
    # the next append starts on a fresh line, so the file stays valid JSON lines
    again.append({"id": "c", "score": 1.0})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["a", "c"]


def test_a_corrupt_line_is_skipped(tmp_path):
    path = tmp_path / RUNS_FILE
    path.write_text('{"id": "a", "score": 1}\nnot json\n{"id": "b", "score": 2}\n')
    assert list(Ledger(tmp_path).records) == ["a", "b"]


def test_numpy_values_are_written_as_plain_numbers(tmp_path):
    import numpy as np

    Ledger(tmp_path).append({"id": "a", "score": np.float32(0.5), "n": np.int64(3)})
    record = json.loads((tmp_path / RUNS_FILE).read_text())
    assert record["score"] == 0.5 and record["n"] == 3
