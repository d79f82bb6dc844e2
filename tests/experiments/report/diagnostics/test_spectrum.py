"""The spectrum section: captured energy per k, mean and min over layers, and its figure."""

from __future__ import annotations

from experiments.report.diagnostics.spectrum import FIG_SPECTRUM, T_SPECTRUM
from tests.experiments.report.diagnostics.helpers import (
    build,
    is_png,
    row,
    text,
)


def test_spectrum_mean_and_min_over_layers_and_figure(tmp_path):
    layer = {"rank": 2, "singular_values": [3.0, 1.0], "total_energy": 10.0}
    diag = {
        "spectrum": {
            "rotten_tomatoes": {
                "mode": "delta",
                "layers": [
                    {
                        **layer,
                        "layer": "layer.0",
                        "cumulative": [{"k": 1, "captured": 0.9}, {"k": 2, "captured": 0.95}],
                        "captured": 0.95,
                    },
                    {
                        **layer,
                        "layer": "layer.1",
                        # the worker's own key name
                        "cumulative_energy": [
                            {"k": 1, "captured": 0.7},
                            {"k": 2, "captured": 0.85},
                        ],
                        "captured": 0.85,
                    },
                ],
            },
            # no cumulative list: summed from the per-direction energy
            "trec6": {"mode": "raw", "layers": [{"layer": "layer.0", "energy": [0.5, 0.3, 0.2]}]},
        }
    }
    md = text(build(tmp_path, [], draw=True, diagnostics=diag)[T_SPECTRUM])
    assert row(md, "rotten_tomatoes") == [
        "rotten_tomatoes",
        "delta",
        "2",
        "80.0 (70.0)",
        "90.0 (85.0)",
        "–",
        "–",
        "–",
        "–",
        "90.0 (85.0)",
    ]
    assert row(md, "trec6")[3:6] == ["50.0 (50.0)", "80.0 (80.0)", "–"]
    assert row(md, "trec6")[-1] == "100.0 (100.0)"  # all kept: the energy's sum
    assert "raw-mode basis" in md and "no seed spread (n = 1)" in md
    assert is_png(tmp_path / FIG_SPECTRUM) and f"]({FIG_SPECTRUM})" in md
