"""Subspace runs as PEFT adapters (worker.finetune.peft_adapter): save_pretrained /
PeftModel.from_pretrained round trips, merge_and_unload equal to tinysub's merge, and a basis
whose sha256 differs from the recorded one refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file

from storage.errors import InvalidInput
from tests.worker.finetune.conftest import make_batch, make_causal_model, make_lm_batch, make_model
from tests.worker.finetune.helpers import task_basis_for
from worker.finetune.config import SubspaceConfig
from worker.finetune.methods import prepare
from worker.finetune.peft_adapter import TinysubConfig
from worker.finetune.peft_export import export_peft, peft_config_for
from worker.finetune.sources import StoreBasisSource


def trained(model, method: str, config: SubspaceConfig, source=None):
    """A SubspaceModel whose theta, SAID scales and trained parts moved off their init."""
    sub = prepare(method, model, config, source=source)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in sub.subspace_theta.values():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
        for p in sub.subspace_said.values():
            p.fill_(1.25)
        for name in sub.trainable_base:
            sub.base.get_parameter(name).add_(0.01)
    return sub.eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


def test_fastfood_with_said_round_trips_and_merges_like_tinysub(tmp_path):
    sub = trained(make_model("bert"), "fastfood", SubspaceConfig(rank=4, said=True))
    batch = make_batch()
    batch.pop("labels")
    want = sub(**batch).logits
    folder = export_peft(sub, tmp_path / "adapter")

    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    # theta and the SAID scale per layer, the trained head; never V (generated from its seed)
    assert any(k.endswith("tinysub_theta") for k in saved)
    assert any(k.endswith("tinysub_said") for k in saved)
    assert not any("projection" in k or "basis" in k for k in saved)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "TINYSUB" and config["basis"]["kind"] == "fastfood"

    loaded = PeftModel.from_pretrained(make_model("bert").eval(), folder)
    assert isinstance(loaded.peft_config["default"], TinysubConfig)
    torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=1e-5)
    assert_same_weights(loaded.merge_and_unload(), sub.merge())


def test_a_stored_basis_is_checked_by_sha256_when_loading(tmp_path):
    basis = task_basis_for(lambda: make_model("bert"), tmp_path, k=4)
    source = StoreBasisSource.open(basis.url)
    sub = trained(make_model("bert"), "intrinsic", SubspaceConfig(rank=4), source=source)
    batch = make_batch()
    batch.pop("labels")
    want = sub(**batch).logits
    folder = tmp_path / "adapter"
    export_peft(sub, folder)
    loaded = PeftModel.from_pretrained(make_model("bert").eval(), folder)
    torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=1e-5)
    assert_same_weights(loaded.merge_and_unload(), sub.merge())

    # Another basis at the recorded path: the adapter refuses it.
    config = json.loads((folder / "adapter_config.json").read_text())
    layer = next(iter(config["basis"]["layers"]))
    config["basis"]["layers"][layer]["sha256"] = "0" * 64
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="sha256"):
        PeftModel.from_pretrained(make_model("bert").eval(), folder)


def test_a_global_theta_is_refused_with_the_reason():
    sub = prepare("random", make_model("bert"), SubspaceConfig(rank=2, scope="global"))
    with pytest.raises(InvalidInput, match="global theta"):
        peft_config_for(sub)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_decoder_adapter_loads_in_a_fresh_process_with_the_same_logits(arch, tmp_path):
    sub = trained(make_causal_model(arch), "random", SubspaceConfig(rank=3))
    batch = make_lm_batch()
    batch.pop("labels")
    want = sub(**batch).logits
    export_peft(sub, tmp_path / "adapter")
    torch.save({"batch": batch, "logits": want}, tmp_path / "want.pt")
    # A fresh interpreter: only the registered method and the folder carry the adapter.
    script = textwrap.dedent(
        f"""
        import torch
        from peft import PeftModel
        import worker.finetune.peft_adapter  # registers the tinysub PEFT method
        from tests.worker.finetune.conftest import make_causal_model
        saved = torch.load({str(tmp_path / "want.pt")!r})
        base = make_causal_model({arch!r}).eval()
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r})
        got = model(**saved["batch"]).logits
        print(float((got - saved["logits"]).abs().max()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-5
    config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert isinstance(config, TinysubConfig) and config.method == "random"
