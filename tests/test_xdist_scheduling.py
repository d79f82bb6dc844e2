"""`make test`'s scheduling survives a worker that dies: the run ends, the test it died in is a
failure, every other test runs once (stock pytest-xdist 3.8 hangs on this suite forever)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from services.local import REPO

FILES = {
    "conftest.py": """
        from tests.xdist_scheduling import make_scheduler

        def pytest_xdist_make_scheduler(config, log):
            return make_scheduler(config, log)
    """,
    "pytest.ini": "[pytest]\n",
    # One test dies between two that pass; a file whose only test dies; files that pass.
    "test_crash.py": """
        import os

        def test_before():
            pass

        def test_crash():
            os._exit(1)

        def test_after():
            pass
    """,
    "test_crash_single.py": """
        import os

        def test_only():
            os._exit(1)
    """,
    **{f"test_ok{i}.py": "def test_a():\n    pass\n\ndef test_b():\n    pass\n" for i in range(3)},
}


def test_a_dead_worker_neither_hangs_the_run_nor_loses_tests(tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=240,  # the stock scheduler never returns here
    )
    out = done.stdout
    assert done.returncode == 1, out
    assert "2 failed, 8 passed" in out, out
    assert "crashed while running 'test_crash.py::test_crash'" in out
    assert "crashed while running 'test_crash_single.py::test_only'" in out
