import math

import numpy as np
import pytest
import torch

from storage.errors import InvalidInput
from storage.layout import build_layout
from tests.worker.finetune.conftest import make_batch, make_model
from worker.finetune import outliers
from worker.finetune.train import HeldZero


@pytest.fixture
def layout():
    return build_layout(
        [
            ("encoder.layer.0.attention.weight", (100, 50)),
            ("encoder.layer.0.attention.bias", (50,)),
            ("encoder.layer.0.LayerNorm.weight", (50,)),
            ("encoder.layer.1.attention.weight", (100, 50)),
            ("encoder.layer.1.attention.bias", (50,)),
            ("encoder.layer.1.LayerNorm.weight", (50,)),
        ]
    )


def test_planted_spikes_are_found_where_they_were_planted(layout):
    rng = np.random.default_rng(0)
    size = layout.group("layer.0").size  # 5100
    noise = {g: 0.01 * rng.standard_normal(size) for g in layout.group_names}
    # Spikes in the attention weight at [3, 7], the bias at [11] and the LayerNorm at [42].
    spikes = {5000 + 11: 1.0, 3 * 50 + 7: -0.8, 5050 + 42: 0.6}
    for pos, val in spikes.items():
        noise["layer.1"][pos] = val
    found = outliers.find_outliers(noise, sigma=6.0)
    assert found["layer.0"].count == 0
    assert found["layer.1"].indices.tolist() == list(spikes)  # largest |z| first
    where = outliers.locate(layout, "layer.1", found["layer.1"].indices)
    assert where == [
        ("attention.bias", (11,)),
        ("attention.weight", (3, 7)),
        ("LayerNorm.weight", (42,)),
    ]
    table = outliers.position_table(found, layout)
    assert {r["component"]: r["layers"] for r in table} == {
        "attention.weight": ["layer.1"],
        "attention.bias": ["layer.1"],
        "LayerNorm.weight": ["layer.1"],
    }
    # The spiky layer has a heavy tail; the Gaussian one does not.
    assert found["layer.1"].kurtosis > 50 and abs(found["layer.0"].kurtosis) < 0.5


def test_gaussian_noise_has_no_outliers_beyond_its_own_tail():
    rng = np.random.default_rng(1)
    n = 200_000
    updates = {"layer.0": rng.standard_normal(n) * 3 + 2}
    at3 = outliers.find_outliers(updates, sigma=3.0)["layer.0"]
    # The paper's 3-sigma rule flags the Gaussian tail itself, 0.27% of entries; a Gaussian
    # gives that and no excess (binomial tolerance: 5 standard deviations).
    p = math.erfc(3 / math.sqrt(2))
    assert abs(at3.count - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert abs(at3.summary()["excess"] - 1) < 5 / math.sqrt(n * p)
    assert outliers.find_outliers(updates, sigma=6.0)["layer.0"].count == 0
    assert outliers.find_outliers({"layer.0": np.zeros(10)})["layer.0"].count == 0


def test_profile_keeps_every_spike():
    u = np.zeros(100_000)
    u[12345] = -7.0
    prof = outliers.profile(u, bins=100)
    assert prof.shape == (100,) and prof.max() == 7.0 and np.count_nonzero(prof) == 1


def test_save_load_and_plot(tmp_path, layout):
    rng = np.random.default_rng(2)
    updates = {g: rng.standard_normal(layout.group(g).size) for g in layout.group_names}
    updates["layer.0"][77] = 40.0
    found = outliers.find_outliers(updates)
    rep = outliers.save(tmp_path / "run", found, layout, updates)
    assert rep["top"]["layer.0"][0] == {
        "parameter": "attention.weight",
        "index": [1, 27],
        "value": 40.0,
    }
    arrays = outliers.load_arrays(tmp_path / "run")
    np.testing.assert_array_equal(arrays["layer.0"]["indices"], found["layer.0"].indices)
    outliers.plot_profiles(
        {
            "intrinsic": {g: a["profile"] for g, a in arrays.items()},
            "random": {g: a["profile"] for g, a in arrays.items()},
        },
        tmp_path / "fig.png",
    )
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_disable_masks_hold_the_outliers_or_as_many_random_weights(layout):
    positions = {"layer.0": np.array([0, 5010, 5100 - 1]), "layer.1": np.array([], dtype=np.int64)}
    masks = outliers.disable_masks(layout, positions)
    assert masks["encoder.layer.0.attention.weight"].nonzero().tolist() == [[0, 0]]
    assert masks["encoder.layer.0.attention.bias"].nonzero().tolist() == [[10]]
    assert masks["encoder.layer.0.LayerNorm.weight"].nonzero().tolist() == [[49]]
    assert not any(k.startswith("encoder.layer.1") for k in masks)
    rand = outliers.disable_masks(layout, positions, mode="random", seed=3)
    assert sum(int(m.sum()) for m in rand.values()) == 3
    assert rand.keys() != masks.keys() or any(not torch.equal(rand[k], masks[k]) for k in rand)
    with pytest.raises(InvalidInput):
        outliers.disable_masks(layout, {"layer.0": np.array([10**6])})


def test_held_zero_weights_stay_zero_through_training():
    model = make_model("bert")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    mask = torch.zeros_like(model.get_parameter(name), dtype=torch.bool)
    mask[0, :5] = True
    mask[3, 2] = True
    held = HeldZero(model, {name: mask})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    before = model.get_parameter(name).detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(**make_batch()).loss.backward()
        assert model.get_parameter(name).grad[mask].abs().sum() == 0
        opt.step()
        held.apply()
    w = model.get_parameter(name)
    assert torch.all(w[mask] == 0) and held.count() == 6
    assert not torch.equal(w[~mask], before[~mask])  # the other weights trained
    held.remove()
