"""The side files the diagnostics read, the phase that writes each, and how one is loaded.

Why apart: a missing file drops its section, an unreadable one gives a section that says so
and names the phase to rerun, so every section needs the same names and the same loader. The
k grid of diagnostics.json's spectrum is here too: the spectrum and oracle sections share it.
"""

from __future__ import annotations

import json
from pathlib import Path

TUNING_FILE = "tuning.json"
DIAGNOSTICS_FILE = "diagnostics.json"
OUTLIERS_FILE = "outliers.json"

# The phase of `tinysub experiment paper` that writes each file, named in "missing" notes.
PRODUCERS = {TUNING_FILE: "tune", DIAGNOSTICS_FILE: "diagnostics", OUTLIERS_FILE: "outliers"}

# The k at which diagnostics.json records a basis' captured energy:
# worker.finetune.diagnostics.SPECTRUM_KS, copied: importing the worker pulls in torch.
SPECTRUM_KS = (1, 2, 4, 8, 16, 32)


def load_side_file(out_dir: Path, name: str) -> tuple[dict | None, str | None]:
    """(data, None); (None, None) when the file is missing; (None, why) when unreadable."""
    path = out_dir / name
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"could not be read ({exc})"
    if not isinstance(data, dict):
        return None, f"holds a {type(data).__name__}, not a JSON object"
    return data, None
