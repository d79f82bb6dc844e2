"""Findings T3 (outliers hurt more than random weights) and T3c (what the collapse is made of).

Why apart from the section: the rules are the finest of the report (two protocols, four
contrasts, a fallback from one protocol to the other), and the tests pin them at their
thresholds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from experiments import paper_numbers as paper
from experiments.report.diagnostics.contrast import Contrast, Scores, contrast, fmt_contrast
from experiments.report.diagnostics.files import OUTLIERS_FILE, PRODUCERS
from experiments.report.markdown import fmt_pts
from experiments.report.stats import Finding, verdict

T3_CLAIM = "disabling outliers hurts much more than disabling as many random weights"
T3C_CLAIM = "the collapse is task knowledge, not the mechanics of zeroing LayerNorm gains"
T3C_NEEDS = ("outlier", "random", "outlier_non_ln", "random_matched", "outlier_ln")


def _paper_t3(model: str) -> float:
    rows = paper.TABLE3[model]
    return statistics.fmean(rows["random"][g] - rows["outlier"][g] for g in paper.GLUE)


def t3_finding(held: Scores, post: Scores) -> Finding:
    c, p = contrast(held, "random", "outlier"), contrast(post, "random", "outlier")
    f = Finding(
        "T3",
        T3_CLAIM,
        "mean over tasks of (random − outlier), both held at zero during fine-tuning, ≥ 20 "
        "points → holds; ≥ 5 → partly; else does not hold",
        verdict(c.gap, 20, 5),
        measured=f"held during fine-tuning: random − outlier = {fmt_contrast(c)}; "
        f"zeroed post hoc: {fmt_contrast(p)}",
        paper=f"BERT {_paper_t3('BERT'):.1f}, RoBERTa {_paper_t3('RoBERTa'):.1f} points "
        "(mean of its 8 tasks)",
    )
    if c.gap is None:
        f.reason = (
            "needs the full runs with the outliers and with as many random weights held at "
            f"zero (the {PRODUCERS[OUTLIERS_FILE]} phase)"
        )
        return f
    f.reason = "; ".join(
        h
        for h in (
            "per task: " + ", ".join(f"{t} {fmt_pts(v)}" for t, v in c.per_task.items()),
            _noise(c),
            f"zeroed post hoc the gap is {fmt_pts(p.gap)} points" if p.gap is not None else "",
        )
        if h
    )
    return f


def _noise(c: Contrast) -> str:
    s = c.by_seed
    if c.gap is None or s is None or s.std is None or abs(c.gap) > s.std:
        return ""
    return f"the gap ({fmt_pts(c.gap)} points) is within its seed spread (± {fmt_pts(s.std)})"


@dataclass(frozen=True)
class Mechanism:
    """The contrasts of T3c under one protocol (points)."""

    collapse: Contrast  # random − outlier
    knowledge: Contrast  # random_matched − outlier_non_ln
    ln_alone: Contrast  # random − outlier_ln
    all_gains: Contrast  # random − ln_gains

    @classmethod
    def of(cls, scores: Scores) -> Mechanism:
        return cls(
            contrast(scores, "random", "outlier"),
            contrast(scores, "random_matched", "outlier_non_ln"),
            contrast(scores, "random", "outlier_ln"),
            contrast(scores, "random", "ln_gains"),
        )

    @property
    def any(self) -> bool:
        return self.collapse.gap is not None or self.knowledge.gap is not None

    @property
    def complete(self) -> bool:
        return None not in (self.collapse.gap, self.knowledge.gap, self.ln_alone.gap)

    def score(self) -> float | None:
        """2 holds, 1 partly, 0 does not hold (the rule of T3C_RULE); None when incomplete."""
        if not self.complete:
            return None
        c, k, ln = self.collapse.gap, self.knowledge.gap, self.ln_alone.gap
        if c < 5 or k < 5:
            return 0.0
        return 2.0 if ln < c / 2 else 1.0

    def text(self) -> str:
        c, ln = self.collapse.gap, self.ln_alone.gap
        share = f", {ln / c:.0%} of the collapse" if c and ln is not None and c > 0 else ""
        return (
            f"collapse C = random − outlier = {fmt_contrast(self.collapse)}; K = random_matched − "
            f"outlier_non_ln = {fmt_contrast(self.knowledge)}; L = random − outlier_ln = "
            f"{fmt_contrast(self.ln_alone)}{share}; all gains: random − ln_gains = "
            f"{fmt_contrast(self.all_gains)}"
        )


T3C_RULE = (
    "C = mean over tasks of (random − outlier), K = of (random_matched − outlier_non_ln), "
    "L = of (random − outlier_ln), in points, judged on the runs held at zero during "
    "fine-tuning (zeroed post hoc when those lack a control): K ≥ 5 and L < C/2 → holds "
    "(non-LayerNorm outliers hurt more than random weights of the same components, and the "
    "outliers' LayerNorm gains alone explain under half the collapse); K ≥ 5 and L ≥ C/2 → "
    "partly (both play a part); K < 5 or C < 5 (no collapse to explain) → does not hold"
)


def t3c_finding(held: Scores, post: Scores) -> Finding:
    mech = {
        "held at zero during fine-tuning": Mechanism.of(held),
        "zeroed post hoc": Mechanism.of(post),
    }
    judged = next((name for name, m in mech.items() if m.complete), None)
    score = mech[judged].score() if judged else None
    measured = "; ".join(f"{name}: {m.text()}" for name, m in mech.items() if m.any)
    f = Finding(
        "T3c",
        T3C_CLAIM,
        T3C_RULE,
        verdict(score, 2, 1),
        measured=f"judged on the runs {judged}. {measured}" if judged else "",
        paper="not tested (the paper's only control is as many random weights)",
    )
    if judged is None:
        f.reason = (
            f"needs the controls {', '.join(T3C_NEEDS)} held at zero or zeroed post hoc "
            f"(the {PRODUCERS[OUTLIERS_FILE]} phase)"
        )
        return f
    f.reason = _t3c_reason(mech[judged], mech)
    return f


def _t3c_reason(m: Mechanism, mech: Mapping[str, Mechanism]) -> str:
    c, k, ln = m.collapse.gap, m.knowledge.gap, m.ln_alone.gap
    hints = []
    if c < 5:
        hints.append(
            f"there is little collapse to explain (random − outlier = {fmt_pts(c)} points)"
        )
    if k < 5:
        hints.append(
            f"the non-LayerNorm outliers cost only {fmt_pts(k)} points more than random weights "
            "of the same components"
        )
    if c >= 5 and ln >= c / 2:
        hints.append(
            f"zeroing only the outliers' LayerNorm gains already costs {fmt_pts(ln)} of the "
            f"{fmt_pts(c)} points"
        )
    hints.append(_noise(m.knowledge))
    verdicts = {name: x.score() for name, x in mech.items() if x.complete}
    if len(set(verdicts.values())) > 1:
        hints.append(
            "the two protocols disagree: "
            + ", ".join(f"{n} {verdict(v, 2, 1)}" for n, v in verdicts.items())
        )
    return "; ".join(h for h in hints if h) or "no simple cause visible in the numbers"
