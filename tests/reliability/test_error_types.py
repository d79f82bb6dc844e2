"""Errors keep their class across the wire: every TinysubError the registry or a worker raises
is in storage.errors.ERROR_TYPES, has one HTTP status, and the client rebuilds the same class
(the 413, 416 and 409-not-ready errors used to come back as their parents)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from client import Client
from client.errors import error_from_body
from services.errors import STATUS, status_for
from storage import errors
from storage.errors import (
    ERROR_TYPES,
    Conflict,
    InsufficientStorage,
    NotReady,
    PayloadTooLarge,
    RangeNotSatisfiable,
    StorageError,
    TaskFailed,
    TinysubError,
)
from tests.services.helpers import add_task, make_app, token_for
from worker.executors import TaskFailed as WorkerTaskFailed


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_error_class_is_in_the_table_with_a_unique_code():
    import client.retry  # noqa: F401
    import services.jobs  # noqa: F401 - import everything that defines errors
    import services.migrations  # noqa: F401
    import worker.svd.engine  # noqa: F401

    # RetriesExhausted is raised by the client itself when it cannot reach the registry: it
    # never crosses the wire, so it has no row in the table.
    local = {client.retry.RetriesExhausted}
    defined = {c for c in _all_subclasses(TinysubError) if c.__module__.startswith(
        ("storage", "services", "worker", "client"))} - local  # fmt: skip
    assert defined <= set(ERROR_TYPES.values()), defined - set(ERROR_TYPES.values())
    assert all(ERROR_TYPES[c.code] is c for c in ERROR_TYPES.values())
    assert WorkerTaskFailed is TaskFailed


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (NotReady, 409),
        (PayloadTooLarge, 413),
        (RangeNotSatisfiable, 416),
        (InsufficientStorage, 507),
        (TaskFailed, 500),
    ],
)
def test_new_types_have_their_status_and_round_trip(cls, status):
    assert status_for(cls("x")) == status
    rebuilt = error_from_body(status, {"code": cls.code, "message": "m", "detail": None})
    assert type(rebuilt) is cls
    # A body without a code (a proxy's error page) still gives the class of the status where
    # the status names one class.
    if status in (413, 416, 507):
        assert isinstance(error_from_body(status, None), cls)
    assert issubclass(NotReady, Conflict) and issubclass(InsufficientStorage, StorageError)
    assert set(STATUS) >= {NotReady, PayloadTooLarge, RangeNotSatisfiable, InsufficientStorage}


def test_storage_error_names_a_full_disk():
    import errno

    full = errors.storage_error("writing x", OSError(errno.ENOSPC, "No space left on device"))
    assert type(full) is InsufficientStorage and "No space left" in str(full)
    other = errors.storage_error("writing x", OSError(errno.EIO, "I/O error"))
    assert type(other) is StorageError


def test_client_sees_the_exact_classes(tmp_path):
    app = make_app(tmp_path, max_upload_bytes=4096)
    from tests.services.helpers import small_layout

    layout = small_layout()
    with TestClient(app) as http:
        c = Client("http://testserver", token=token_for(app, "admin"), http=http,
                   cache_dir=tmp_path / "cache")  # fmt: skip
        admin = TestClient(app, headers={"Authorization": f"Bearer {c.token}"})
        add_task(admin, tmp_path, "a", layout, rows=5)
        job = c.compute_basis("a", "task", rank=2)  # the runner is not started: stays pending
        with pytest.raises(NotReady) as info:
            c.basis("a", "task", version=1)
        assert isinstance(info.value, Conflict) and info.value.status_code == 409
        app.state.runner.run_pending()
        assert job.wait(timeout=30).status == "succeeded"
        layer = c.basis("a", "task")["layers"][0]
        with pytest.raises(RangeNotSatisfiable):
            c.request("GET", layer["url"], headers={"Range": f"bytes={layer['nbytes']}-"})
        c.request_json("POST", "/v1/tasks", json={"id": "b", "model": "tiny",
                                           "layout": layout.to_dict()})  # fmt: skip
        c.request_json("POST", "/v1/tasks/b/trajectory", json={})
        with pytest.raises(PayloadTooLarge):
            c.request(
                "PUT",
                "/v1/tasks/b/trajectory/rows/0/groups/layer.0",
                content=b"\0" * 8192,
                headers={"Content-Type": "application/octet-stream"},
            )


def test_a_failed_task_comes_back_as_task_failed(tmp_path, monkeypatch):
    """A worker bug (not a TinysubError) fails the job with code task_failed; the client's
    job.wait() raises TaskFailed, not a generic error."""
    from tests.services.helpers import small_layout

    app = make_app(tmp_path, job_max_attempts=1)
    layout = small_layout()
    with TestClient(app) as http:
        c = Client("http://testserver", token=token_for(app, "admin"), http=http,
                   cache_dir=tmp_path / "cache")  # fmt: skip
        admin = TestClient(app, headers={"Authorization": f"Bearer {c.token}"})
        add_task(admin, tmp_path, "a", layout, rows=5)

        def broken(task):
            raise ZeroDivisionError("a bug in a chunk task")

        monkeypatch.setattr("worker.svd.solve.gram_block", broken)
        job = c.compute_basis("a", "task", rank=2)
        app.state.runner.run_pending()
        with pytest.raises(TaskFailed, match="ZeroDivisionError"):
            job.wait(timeout=30)
        assert job.error_code == "task_failed"
