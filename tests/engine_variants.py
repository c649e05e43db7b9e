"""Adapters with the features serving engines differ on, saved by PEFT itself (tiny Llama, seeded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import make_adapter

# name -> peft.LoraConfig options (on top of r=4, lora_alpha=8, q_proj and v_proj)
VARIANTS: dict[str, dict] = {
    "plain": {},
    "dora": {"use_dora": True},
    "saved": {"modules_to_save": ["lm_head"]},
    "wide": {"r": 32, "lora_alpha": 64},
    "patterned": {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 2}},
    "embedding": {"target_modules": ["q_proj", "embed_tokens"]},
    "biased": {"bias": "lora_only"},
}


@pytest.fixture(scope="session")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {
        name: make_adapter(root / name, seed=i, **opts) for i, (name, opts) in enumerate(VARIANTS.items())
    }
