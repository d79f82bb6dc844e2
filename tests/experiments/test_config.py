"""The experiment's settings check themselves: a bad combination fails before any training."""

from __future__ import annotations

import json

import pytest

from experiments.config import PaperConfig, preset
from storage.errors import InvalidInput


@pytest.mark.parametrize("name", ["default", "quick", "tiny"])
def test_presets_are_valid_and_round_trip(name):
    cfg = preset(name)
    assert PaperConfig.from_dict(cfg.to_dict()) == cfg
    # t rows spread over the whole trajectory run, the last step included
    assert cfg.record_every * cfg.rows == cfg.trajectory_steps
    assert cfg.tune_seed not in cfg.seeds


def test_default_matches_the_issue():
    cfg = preset("default")
    assert cfg.model == "minilm"
    assert cfg.rows == 32 and cfg.dim == 32 and len(cfg.seeds) >= 3
    assert set(cfg.tasks) == {"rotten_tomatoes", "trec6", "vader_movies", "sms_spam"}
    assert cfg.ablation_dims == (8, 16, 32)
    # unified: a few checkpoints of each of the four tasks; zero-shot drops one task's share
    assert cfg.unified_dim == 32 and cfg.zeroshot_dim == 24
    # issue 11: a trajectory long enough to converge, lrs chosen on a tuning split, a gate
    assert cfg.trajectory_steps >= 5 * cfg.steps
    assert None in (cfg.lr, cfg.head_lr, cfg.theta_lr, cfg.plain_theta_lr)
    assert cfg.gate_margin and cfg.gate_margin > 0


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"trajectory_steps": 50}, "multiple of rows"),
        ({"tune_seed": 0}, "evaluation seed"),
        ({"theta_lr_grid": ()}, "theta_lr"),
        ({"head_lr_grid": (0.0,)}, "positive"),
        ({"dim": 64}, "exceed"),
        ({"modes_dim": 32}, "centered"),
        ({"tasks": ("trec6",)}, "two tasks"),
        ({"tasks": ("trec6", "trec6")}, "repeat"),
        ({"seeds": ()}, "seed"),
        ({"d90_methods": ("lora",)}, "d90 methods"),
        ({"d90_intrinsic_grid": (1, 64)}, "intrinsic d90 grid"),
        ({"workers": 0}, "workers"),
        ({"unified_per_task": 0}, "unified_per_task"),
    ],
)
def test_bad_settings_are_refused(changes, words):
    with pytest.raises(InvalidInput, match=words):
        PaperConfig(**changes)


def test_unknown_settings_and_presets_are_refused():
    with pytest.raises(InvalidInput, match="unknown experiment settings"):
        PaperConfig.from_dict({"stepz": 3})
    with pytest.raises(InvalidInput, match="unknown preset"):
        preset("huge")


def test_a_setting_newer_than_the_folder_counts_as_its_default(tmp_path):
    """A folder written before `engine` existed resumes as the loop; another engine is refused."""
    from experiments.paper import PaperExperiment

    cfg = preset("tiny")
    PaperExperiment(cfg, tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    assert saved.pop("engine") == "loop"
    path.write_text(json.dumps(saved))
    PaperExperiment(cfg, tmp_path)  # resumes
    with pytest.raises(InvalidInput, match=r"other settings \(engine\)"):
        PaperExperiment(cfg.replace(engine="trainer"), tmp_path)
    with pytest.raises(InvalidInput, match="engine 'fast' is not one of"):
        cfg.replace(engine="fast")
