"""Tests of what the README promises must not skip silently: PostgreSQL, the S3 test server
(moto), and the Dask and Ray clusters.

A test or fixture that cannot run because one of these is missing calls `skip_missing` (or
`import_or_skip_missing`) instead of `pytest.skip`. The skip it raises is a `MissingComponent`,
told apart by its type, never by its message; the hooks below (re-exported by tests/conftest.py)
turn it into a failure that names the test, the component and the reason, unless the
TINYSUB_ALLOW_SKIPS environment variable names the component:

    TINYSUB_ALLOW_SKIPS=postgres,s3 make test    # or =all, on a machine that cannot run them

Every other skip (a GPU-only test on a CPU machine, a test that runs after others) is untouched.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import NoReturn

import pytest

COMPONENTS = ("postgres", "s3", "dask", "ray")
ALLOW_VAR = "TINYSUB_ALLOW_SKIPS"

_allowed = pytest.StashKey[frozenset[str]]()
_missing = pytest.StashKey[list[tuple[str, str, str, bool]]]()  # nodeid, component, reason, allowed
_PROPERTY = "tinysub_missing_component"


class MissingComponent(pytest.skip.Exception):
    """A skip because a component the README promises cannot run on this machine."""

    def __init__(self, component: str, reason: str) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; use one of {COMPONENTS}")
        super().__init__(f"{component} missing: {reason}")
        self.component = component
        self.reason = reason


def skip_missing(component: str, reason: str) -> NoReturn:
    """Skip the running test or fixture because `component` cannot run here (see module doc)."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    raise MissingComponent(component, reason)


def import_or_skip_missing(component: str, module: str, reason: str | None = None) -> ModuleType:
    """`pytest.importorskip` for a module that a promised component needs."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(module)
    except ImportError as e:
        skip_missing(component, reason or f"cannot import {module} ({e})")


def allowed_skips(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The components TINYSUB_ALLOW_SKIPS lets skip: a comma-separated list, or `all`."""
    raw = environ.get(ALLOW_VAR, "")
    names = {name.strip() for name in raw.split(",") if name.strip()}
    if "all" in names:
        return frozenset(COMPONENTS)
    unknown = names - set(COMPONENTS)
    if unknown:
        raise pytest.UsageError(
            f"{ALLOW_VAR}={raw!r} names {', '.join(sorted(unknown))}; "
            f"use a comma-separated list of {', '.join(COMPONENTS)}, or all"
        )
    return frozenset(names)


def _opt_out(component: str) -> str:
    return f"set {ALLOW_VAR}={component} (or =all) on a machine that cannot run it"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_allowed] = allowed_skips()
    config.stash[_missing] = []
    config.pluginmanager.register(_Collector(config), "tinysub-promised-collector")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    missing = call.excinfo.value if call.excinfo is not None else None
    if not isinstance(missing, MissingComponent):
        return report
    allowed = missing.component in item.config.stash[_allowed]
    # Carried on the report, which pytest-xdist sends from its workers to the process that
    # prints the summary (_Collector below gathers it there).
    report.user_properties.append((_PROPERTY, (missing.component, missing.reason, allowed)))
    if allowed:
        path, lineno, _ = report.longrepr
        report.longrepr = (path, lineno, f"{missing} (allowed by {ALLOW_VAR})")
    else:
        # A failure with the message alone, as pytest.fail(..., pytrace=False) reports it.
        failed = pytest.fail.Exception(f"{missing}; {_opt_out(missing.component)}", pytrace=False)
        failed = failed.with_traceback(missing.__traceback__)
        report.outcome = "failed"
        report.longrepr = item.repr_failure(pytest.ExceptionInfo.from_exception(failed))
    return report


class _Collector:
    """Gathers the missing components from every report, in the process that prints them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == _PROPERTY:
                self.config.stash[_missing].append((report.nodeid, *value))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    missing = list(dict.fromkeys(config.stash.get(_missing, [])))
    if not missing:
        return
    tr = terminalreporter
    failed = sorted({m[1] for m in missing if not m[3]}, key=COMPONENTS.index)
    if failed:
        tr.section("tests of promised components could not run", red=True)
    else:
        tr.section(f"promised components skipped, as {ALLOW_VAR} allows", yellow=True)
    for component in COMPONENTS:
        tests = [m for m in missing if m[1] == component]
        if tests:
            state = f"skipped ({ALLOW_VAR})" if tests[0][3] else "FAILED"
            reasons = "; ".join(dict.fromkeys(m[2] for m in tests))
            tr.line(f"{component}: {len(tests)} tests {state}: {reasons}")
            for nodeid, *_ in tests:
                tr.line(f"    {nodeid}")
    if failed:
        tr.line(
            f"The README promises these tests. Install what is missing or, on a machine that "
            f"cannot run them, set {ALLOW_VAR}={','.join(failed)} (or =all) to let them skip."
        )
