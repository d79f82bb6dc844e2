"""DIR/report.md and its figures, built from what `tinysub experiment paper` wrote into DIR.

Why the report computes its own verdicts: a reproduction is only as honest as its summary. Each
finding of the paper gets a one-line verdict (holds / partly / does not hold / not run yet)
derived from the measured means by a rule printed in the report, never written by hand, and
every table shows mean ± std over seeds with the paper's numbers beside it. Where a verdict is
not "holds", a "Likely reason:" line offers simple, factual hints from the same numbers (the
encoder barely moves on the task, the gap is within seed noise, ...).

The report works on partial results: a missing run shows as "–", a finding without its runs
says "not run yet", a missing config.json / phases.json / d90.json or run folder is noted and
skipped. Only a missing runs.jsonl is an error (there is nothing to report).

Which records feed which table is decided by their fields (method, variant, mode, dim, scope),
never by their phase: one run can serve several tables (intrinsic at dim 16 is in Tables 5/6,
the modes comparison and a d90 search).

The modules, each importing only those above it in this list:

- stats, markdown, results, selectors: seed statistics and verdicts, cell formats, loading DIR,
  which records feed which table;
- columns, hints: the paper's numbers beside ours, the "Likely reason:" hints;
- overview, table1, fig2, table2, table3, outliers, ablation, choices, d90: one section each
  (overview: setup and wall-clock; choices: global vs layer-wise, basis modes, θ lr);
- diagnostics/: the sections that explain the tables (tuning, spectrum, oracle, learning
  curves, θ vs extent, runs below freeze, outlier controls with T3 and T3c);
- render: the report in order, with its headline, verdict table and rules.

The CLI (`tinysub experiment report`) and experiments.paper use the two entry points below.
"""

from experiments.report.render import build_report, headline

__all__ = ["build_report", "headline"]
