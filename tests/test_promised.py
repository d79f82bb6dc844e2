"""The hooks of tests/promised.py, run on a small suite by pytester: a skipped test of a promised
component fails the run and says how to opt out, TINYSUB_ALLOW_SKIPS lets it skip, and other
skips stay skips."""

from __future__ import annotations

import pytest

from tests.promised import ALLOW_VAR

pytest_plugins = ["pytester"]

# As tests/conftest.py wires the hooks.
CONFTEST = (
    "from tests.promised import pytest_configure, pytest_runtest_makereport, "
    "pytest_terminal_summary"
)

SUITE = """
import pytest

from tests.promised import import_or_skip_missing, skip_missing


@pytest.fixture(scope="session")
def server():
    skip_missing("postgres", "no PostgreSQL server binaries")


def test_needs_the_server(server):
    pass


def test_needs_the_server_too(server):
    pass


def test_needs_a_module():
    import_or_skip_missing("s3", "no_such_module_for_tinysub")


def test_gpu_only():
    pytest.skip("needs a CUDA GPU")


def test_plain():
    pass
"""


@pytest.fixture
def run(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)

    def run(allow: str | None):
        if allow is None:
            monkeypatch.delenv(ALLOW_VAR, raising=False)
        else:
            monkeypatch.setenv(ALLOW_VAR, allow)
        return pytester.runpytest("-ra")

    return run


def test_a_skipped_promised_test_fails_the_run(run):
    result = run(None)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=2)  # the GPU test still skips
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_needs_the_server*",
            "postgres missing: no PostgreSQL server binaries; "
            f"set {ALLOW_VAR}=postgres (or =all) on a machine that cannot run it",
            "*_ test_needs_a_module _*",
            "s3 missing: cannot import no_such_module_for_tinysub (*); "
            f"set {ALLOW_VAR}=s3 (or =all) on a machine that cannot run it",
            "*= tests of promised components could not run =*",
            "postgres: 2 tests FAILED: no PostgreSQL server binaries",
            "    test_suite.py::test_needs_the_server",
            "    test_suite.py::test_needs_the_server_too",
            "s3: 1 tests FAILED: cannot import no_such_module_for_tinysub*",
            f"*set {ALLOW_VAR}=postgres,s3 (or =all) to let them skip.",
            "*short test summary info*",
            "SKIPPED * test_suite.py:24: needs a CUDA GPU",
            "ERROR test_suite.py::test_needs_the_server - Failed: postgres missing*",
            "ERROR test_suite.py::test_needs_the_server_too - Failed: postgres missing*",
            "FAILED test_suite.py::test_needs_a_module - Failed: s3 missing*",
        ]
    )


@pytest.mark.parametrize("allow", ["postgres,s3", " s3 , postgres ", "all"])
def test_the_opt_out_lets_them_skip(run, allow):
    result = run(allow)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            f"*= promised components skipped, as {ALLOW_VAR} allows =*",
            f"postgres: 2 tests skipped ({ALLOW_VAR}): no PostgreSQL server binaries",
            "*short test summary info*",
            "SKIPPED * test_suite.py:11: postgres missing: no PostgreSQL server binaries "
            f"(allowed by {ALLOW_VAR})",
            "SKIPPED * test_suite.py:20: s3 missing: cannot import no_such_module_for_tinysub *",
            "SKIPPED * test_suite.py:24: needs a CUDA GPU",
        ]
    )


def test_the_opt_out_is_per_component(run):
    result = run("postgres")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=3, failed=1)
    result.stdout.fnmatch_lines([f"*set {ALLOW_VAR}=s3 (or =all) to let them skip."])


def test_other_skips_stay_silent(pytester, monkeypatch):
    monkeypatch.delenv(ALLOW_VAR, raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        def test_gpu_only():
            pytest.skip("needs a CUDA GPU")

        @pytest.mark.skipif(True, reason="checks a host without a GPU")
        def test_cpu_only():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=2)
    assert "promised components" not in result.stdout.str()


def test_an_unknown_component_is_a_usage_error(run):
    result = run("postgress")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{ALLOW_VAR}='postgress' names postgress; use *"])
