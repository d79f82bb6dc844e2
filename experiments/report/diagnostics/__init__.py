"""Report sections for the diagnostics of `tinysub experiment paper`, beside the paper's tables.

Why a package of their own: these sections explain the paper's tables rather than reproduce
them (how the learning rates were picked, how much of a run a basis can hold, where theta went,
which runs diverged, and what the outlier collapse of Table 3 is made of). They read files that
only newer experiment folders have, so each section appears only when its data exist:

- DIR/tuning.json       learning-rate searches on the tuning split, and the freeze gate
- DIR/diagnostics.json  per task: the basis' spectrum, the oracle curve, the trajectory extent
- DIR/outliers.json     where the outliers sit, their overlaps, Table 3 zeroed post hoc
- runs.jsonl fields     `curve`/`losses` (learning curves), `theta` (what a subspace run did),
                        `held_zero` (Table 3 held at zero during fine-tuning)

A missing file or field drops its section; an unreadable or malformed one gives a section that
says so. Verdicts follow printed rules from the measured numbers, as in the paper's tables.
`sections.diagnostic_sections` builds them all in report order.
"""
