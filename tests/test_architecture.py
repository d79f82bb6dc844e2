"""The layers of docs/architecture.md are the import contract that CI enforces.

The contract lives in pyproject.toml ([tool.importlinter]) and `make lint` runs it. These
tests keep the page and the contract equal, and check that the contract really fails the build
on a wrong-way import (a contract that passes everything would look the same in CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tinysub", "experiments", "worker", "services", "client", "storage")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contract_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return layers


def page_layers() -> list[str]:
    page = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers .*?-->\n```\n(.*?)```", page, re.S)
    assert block, "docs/architecture.md lost its layers block"
    # Each line is the layer, then two or more spaces, then what it holds.
    return [re.split(r"\s{2,}", line.strip())[0] for line in block.group(1).splitlines()]


def test_the_architecture_page_shows_the_contract():
    assert page_layers() == contract_layers()


def test_every_package_is_in_a_layer():
    modules = [m.strip() for layer in contract_layers() for m in re.split("[|:]", layer)]
    named = {m.split(".")[0] for m in modules}
    assert named == set(PACKAGES)


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path):
    """A copy of the packages and the contract, to break on purpose."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is in the dev extra")
def test_the_contract_holds_and_fails_on_a_wrong_way_import(tree):
    kept = lint_imports(tree)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    errors = tree / "storage" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport client.retry  # noqa: E402 - upwards\n")
    broken = lint_imports(tree)
    assert broken.returncode != 0
    assert "storage.errors -> client.retry" in broken.stdout
