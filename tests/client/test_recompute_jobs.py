"""Recompute jobs from the client: ordered at once, waited for like any job, their result read
from the job; a token at its cap gets TooManyJobs."""

from __future__ import annotations

import pytest

from client import Client
from client.jobs import start_recompute
from storage.errors import TooManyJobs
from tests.services.helpers import token_for, write_store


def test_a_recompute_job_is_waited_for_and_carries_its_result(client, tmp_path, layout):
    store = write_store(tmp_path, "a", layout, rows=6)
    client.create_task("a", model="tiny", layout=layout)
    client.register_trajectory("a", store.url)
    assert client.compute_basis("a", "task", rank=2).wait(timeout=60).status == "succeeded"

    job = start_recompute(client, task_ids=["a"], stale_only=True, dry_run=True)
    assert (job.kind, job.basis, job.params["task_ids"]) == ("recompute", None, ["a"])
    assert repr(job).startswith(f"<Job {job.id} recompute ")
    result = job.wait(timeout=60).result
    assert result["queued"] == [] and [i["reason"] for i in result["skipped"]] == ["up to date"]

    job = start_recompute(client, task_ids=["a"]).wait(timeout=60)
    (item,) = job.result["queued"]
    queued = client.job(item["job_id"])
    assert queued.kind == "basis" and queued.label == "a/task v2"
    assert queued.wait(timeout=60).status == "succeeded"


def test_a_write_token_at_its_cap_gets_too_many_jobs(tmp_path, layout):
    from fastapi.testclient import TestClient

    from tests.services.helpers import make_app

    app = make_app(tmp_path, max_pending_jobs_per_token=1)  # no runner: jobs stay pending
    with TestClient(app) as http:
        c = Client("http://testserver", token=token_for(app, "write"), http=http,
                   cache_dir=tmp_path / "cache")  # fmt: skip
        start_recompute(c, dry_run=True)
        with pytest.raises(TooManyJobs, match="max_pending_jobs_per_token = 1") as info:
            start_recompute(c, dry_run=True)
        assert info.value.status_code == 429 and info.value.detail["retry_after"] == 30
