"""The fine-tuning worker's device: CUDA when present, and TINYSUB_DEVICE (the kernels'
setting) forces one device for the kernels and the fine-tuning alike."""

from __future__ import annotations

import pytest
import torch

from storage.errors import InvalidInput
from worker.finetune.train import resolve_device


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.delenv("TINYSUB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("value", ["cpu", "CPU", " numpy "])
def test_tinysub_device_forces_the_cpu(monkeypatch, value):
    monkeypatch.setenv("TINYSUB_DEVICE", value)
    assert resolve_device("auto") == torch.device("cpu")


def test_an_explicit_device_wins_over_the_variable(monkeypatch):
    monkeypatch.setenv("TINYSUB_DEVICE", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without a GPU")
def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setenv("TINYSUB_DEVICE", "cuda")
    with pytest.raises(InvalidInput, match="no GPU"):
        resolve_device("auto")


def test_a_bad_variable_is_refused(monkeypatch):
    monkeypatch.setenv("TINYSUB_DEVICE", "tpu")
    with pytest.raises(InvalidInput, match="tpu"):
        resolve_device("auto")
