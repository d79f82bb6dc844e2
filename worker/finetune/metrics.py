"""Evaluation metrics of the papers (GLUE's): accuracy, Matthews correlation, Pearson."""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "matthews", "pearson")


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if gold.size else float("nan")


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004), 0 when undefined (as sklearn).

    MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)) with c correct,
    s samples, p_k predicted and t_k true counts of class k.
    """
    pred, gold = np.asarray(pred).astype(np.int64), np.asarray(gold).astype(np.int64)
    if gold.size == 0:
        return float("nan")
    n = int(max(pred.max(), gold.max())) + 1
    p = np.bincount(pred, minlength=n).astype(np.float64)
    t = np.bincount(gold, minlength=n).astype(np.float64)
    c, s = float((pred == gold).sum()), float(gold.size)
    den = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - p @ t) / den) if den > 0 else 0.0


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    pred, gold = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
    if pred.size < 2 or pred.std() == 0 or gold.std() == 0:
        return 0.0
    return float(np.corrcoef(pred, gold)[0, 1])


def evaluate_predictions(problem: str, outputs: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """All metrics that apply: classification gets accuracy and Matthews from the argmax of
    the logits (n, c); regression gets Pearson from the scores (n,) or (n, 1)."""
    if problem == "regression":
        return {"pearson": pearson(outputs.reshape(-1), gold)}
    pred = outputs.argmax(axis=-1)
    return {"accuracy": accuracy(pred, gold), "matthews": matthews(pred, gold)}
