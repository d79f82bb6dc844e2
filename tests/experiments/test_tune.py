"""Phase tune: choices made from the tuning split's scores, and the gate before the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.config import preset
from experiments.tune import TUNING_FILE, Tuning, majority_score
from storage.errors import InvalidInput


def test_majority_scores():
    assert majority_score("accuracy", np.array([0, 1, 1, 1])) == 0.75
    assert majority_score("accuracy", np.array([2, 0, 1, 2, 2, 5])) == 0.5
    # a constant prediction has no correlation with anything
    assert majority_score("matthews", np.array([0, 0, 1])) == 0.0
    assert majority_score("pearson", np.array([0.1, 2.0])) == 0.0
    with pytest.raises(InvalidInput):
        majority_score("bleu", np.array([1]))


def test_the_best_mean_over_tasks_is_chosen_and_kept(tmp_path):
    tuning = Tuning(tmp_path, preset("default"))
    assert tuning.value("head_lr") is None  # open until its search ran
    scores = {
        1e-3: {"a": 0.60, "b": 0.90},  # mean 0.75
        3e-3: {"a": 0.70, "b": 0.85},  # mean 0.775: best on average, not best on b
        1e-2: {"a": 0.50, "b": 0.95},
    }
    assert tuning.record("head_lr", "freeze", None, scores) == 3e-3
    saved = json.loads((tmp_path / TUNING_FILE).read_text())
    assert saved["searches"]["head_lr"]["chosen"] == 3e-3
    assert saved["searches"]["head_lr"]["means"]["0.001"] == pytest.approx(0.75)
    # a new session reads the choice back
    assert Tuning(tmp_path, preset("default")).value("head_lr") == 3e-3
    # a fixed setting wins over any search
    assert Tuning(tmp_path, preset("tiny")).value("lr") == 1e-3


def test_an_empty_search_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="no finished runs"):
        Tuning(tmp_path, preset("default")).record("lr", "full", None, {1e-4: {}})


def test_the_gate_stops_a_head_that_does_not_learn(tmp_path):
    tuning = Tuning(tmp_path, preset("default"))  # margin 0.02
    metrics = {"rt": "accuracy", "sms": "matthews"}
    tuning.gate({"rt": 0.65, "sms": 0.30}, {"rt": 0.52, "sms": 0.0}, metrics)
    assert all(r["passed"] for r in tuning.data["gate"].values())
    # sms_spam at MCC 0.0 is the majority class: the run must stop, saying where and why
    with pytest.raises(InvalidInput, match=r"gate failed.*sms: freeze 0.010 vs majority 0.000"):
        tuning.gate({"rt": 0.65, "sms": 0.01}, {"rt": 0.52, "sms": 0.0}, metrics)
    saved = json.loads((tmp_path / TUNING_FILE).read_text())
    assert saved["gate"]["sms"]["passed"] is False and saved["gate"]["rt"]["passed"] is True


def test_a_gate_without_margin_reports_without_stopping(tmp_path):
    tuning = Tuning(tmp_path, preset("tiny"))  # gate_margin None
    tuning.gate({"rt": 0.40}, {"rt": 0.52}, {"rt": "accuracy"})
    assert tuning.data["gate"]["rt"]["passed"] is True
