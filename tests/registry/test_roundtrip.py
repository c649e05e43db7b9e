"""PEFT as the real client: build a LoRA with PEFT, push it, pull it, load it with
PeftModel.from_pretrained, and get exactly the original's outputs (the raw codec is bit-exact)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from adapters.compress.peft_io import BIN_FILE, SAFETENSORS_FILE
from tests.factories import make_adapter, tiny_llama, token_batch

CASES = {
    "plain": {},
    "modules_to_save": {"modules_to_save": ["lm_head"]},
    "rslora": {"use_rslora": True, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "rank_pattern": {
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "rank_pattern": {"k_proj": 2, "layers.1.self_attn.o_proj": 6},
        "alpha_pattern": {"v_proj": 3},
    },
}


def _logits(adapter_path, seed: int) -> torch.Tensor:
    model = PeftModel.from_pretrained(tiny_llama(seed), str(adapter_path)).eval()
    with torch.no_grad():
        return model(token_batch(seed=seed)).logits


@pytest.mark.parametrize("case", sorted(CASES))
def test_pulled_adapter_gives_the_original_outputs(registry, tmp_path, case):
    seed = sorted(CASES).index(case)
    source = make_adapter(tmp_path / "trained", seed=seed, **CASES[case])
    pushed = registry.push(source, f"acme/{case.replace('_', '-')}", task="demo", aliases=["prod"])
    assert pushed.version.status == "ready"
    pulled = registry.pull(f"acme/{case.replace('_', '-')}@prod", tmp_path / "pulled")

    expected, actual = _logits(source, seed), _logits(pulled.path, seed)
    assert torch.equal(expected, actual)
    assert not torch.equal(expected, _logits_without_adapter(seed))  # the adapter does change outputs
    original, back = load_file(source / SAFETENSORS_FILE), load_file(tmp_path / "pulled" / SAFETENSORS_FILE)
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)


def _logits_without_adapter(seed: int) -> torch.Tensor:
    with torch.no_grad():
        return tiny_llama(seed)(token_batch(seed=seed)).logits


def test_a_legacy_bin_adapter_comes_back_as_safetensors(registry, tmp_path):
    source = make_adapter(tmp_path / "trained", seed=5, modules_to_save=["lm_head"])
    as_bin = tmp_path / "as-bin"
    as_bin.mkdir()
    (as_bin / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    torch.save(load_file(source / SAFETENSORS_FILE), as_bin / BIN_FILE)
    registry.push(as_bin, "acme/legacy", task="demo")
    pulled = registry.pull("acme/legacy", tmp_path / "pulled")
    assert pulled.files == ["adapter_config.json", SAFETENSORS_FILE]
    assert torch.equal(_logits(source, 5), _logits(tmp_path / "pulled", 5))


def test_a_trained_adapter_round_trips(registry, tmp_path):
    """A LoRA that PEFT actually trained (a few optimizer steps), not just random factors."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_llama(11), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = token_batch(seed=11)
    for _ in range(3):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(tmp_path / "trained"))
    registry.push(tmp_path / "trained", "acme/trained", task="demo")
    registry.pull("acme/trained", tmp_path / "pulled")
    trained = _logits(tmp_path / "trained", 11)
    assert not torch.equal(trained, _logits_without_adapter(11))  # training moved lora_B off zero
    assert torch.equal(trained, _logits(tmp_path / "pulled", 11))


def test_the_order_of_rank_pattern_keys_survives(registry, tmp_path):
    """PEFT gives a module the value of the first key that matches it, so the order of rank_pattern
    is part of its meaning: here `q_proj` comes first and gives every q_proj rank 2, although
    `layers.0.self_attn.q_proj` (first in sorted order) asks for 6."""
    import json

    pattern = {"q_proj": 2, "layers.0.self_attn.q_proj": 6}
    source = make_adapter(tmp_path / "trained", seed=6, rank_pattern=pattern)
    config_path = source / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert list(config["rank_pattern"]) != list(pattern)  # PEFT saves its config with sorted keys
    config_path.write_text(json.dumps(config | {"rank_pattern": pattern}))  # the order it trained with
    expected = _logits(source, 6)

    pushed = registry.push(source, "acme/ordered", task="demo")
    assert pushed.version.status == "ready", pushed.version.error
    registry.pull("acme/ordered", tmp_path / "pulled")
    pulled = json.loads((tmp_path / "pulled" / "adapter_config.json").read_text())
    assert list(pulled["rank_pattern"]) == list(pattern)
    assert torch.equal(expected, _logits(tmp_path / "pulled", 6))
