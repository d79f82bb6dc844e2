"""experiments.report.results: a run asked for dim N whose basis held fewer directions stands
in its dim-N cell, with a note."""

from experiments.report.results import at_requested_dim


def test_a_short_basis_run_stands_at_the_dim_it_asked_for():
    records = [
        {
            "id": "intrinsic/sms_spam/delta/d32/s0",
            "task": "sms_spam",
            "method": "intrinsic",
            "dim": 28,
        },
        {"id": "intrinsic/trec6/delta/d32/s0", "task": "trec6", "method": "intrinsic", "dim": 32},
        {"id": "full/trec6/s0", "task": "trec6", "method": "full", "dim": None},
    ]
    notes: list[str] = []
    out = at_requested_dim(records, notes)
    assert [r["dim"] for r in out] == [32, 32, None]
    assert out[0]["columns"] == 28 and "columns" not in out[1]
    assert records[0]["dim"] == 28  # the ledger's record is not changed in place
    assert len(notes) == 1 and "28 directions" in notes[0] and "sms_spam" in notes[0]
