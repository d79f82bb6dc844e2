import pytest

from storage.errors import InvalidInput
from worker.finetune.config import SubspaceConfig
from worker.finetune.train import TrainConfig


def test_defaults_follow_the_paper_but_for_the_theta_rule():
    cfg = SubspaceConfig()
    assert (cfg.ensemble, cfg.init) == (16, "random")
    # theta in the trajectory's units (issue 11); the paper's rule stays one setting away
    assert (cfg.theta_scale, cfg.theta_lr) == ("extent", 0.2)
    assert SubspaceConfig(theta_scale="none", theta_lr=0.01).theta_scale == "none"
    with pytest.raises(InvalidInput, match="theta_scale"):
        SubspaceConfig(theta_scale="sigma")
    assert cfg.train_parts == ("embeddings", "head") and cfg.scope == "layer"
    assert SubspaceConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"ensemble": 0},
        {"theta_lr": 0},
        {"init": "ones"},
        {"init_std": 0.0},
        {"train_parts": ("embeddings", "decoder")},
        {"basis_dtype": "bfloat16"},
        {"scope": "model"},
        {"rank": 0},
        {"fastfood_block": 12},
        {"block_rows": 0},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(InvalidInput):
        SubspaceConfig(**bad)


def test_unknown_saved_settings_and_bad_training_settings_are_refused():
    with pytest.raises(InvalidInput, match="unknown"):
        SubspaceConfig.from_dict({"width": 3})
    for bad in ({"lr": 0}, {"max_steps": 0}, {"warmup_ratio": 1.0}, {"device": "tpu"}):
        with pytest.raises(InvalidInput):
            TrainConfig(**bad)


def test_the_old_name_dim_still_loads_and_reads():
    """`dim` became `rank` (one name for the concept); saved runs and readers keep working."""
    assert SubspaceConfig.from_dict({"dim": 3}).rank == 3
    assert SubspaceConfig.from_dict(SubspaceConfig(rank=4).to_dict()).rank == 4
    with pytest.warns(DeprecationWarning, match="rank"):
        assert SubspaceConfig(rank=5).dim == 5
