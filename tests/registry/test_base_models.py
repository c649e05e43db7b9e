"""The base models a machine can load, as a worker announces them: both ADAPTERS_MODELS_DIR layouts, and
the Hugging Face hub cache layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.registry.codecs import CodecEnvironment, hf_cached_models, hf_hub_cache

MODEL = "tiny-llama"


@pytest.fixture
def models_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder.parent


def test_available_models_lists_both_models_dir_layouts(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # this machine's own cache aside
    for folder in ("acme--encoder", "org/name"):
        (models_dir / folder).mkdir(parents=True)
        (models_dir / folder / "config.json").write_text("{}")
    (models_dir / "acme--encoder" / "1_Pooling").mkdir()  # a model's own subfolder is no model
    (models_dir / "acme--encoder" / "1_Pooling" / "config.json").write_text("{}")
    (models_dir / "half-downloaded").mkdir()  # no config.json
    environment = CodecEnvironment(models_dir)
    assert environment.available_models() == ["acme/encoder", "org/name", MODEL]
    assert all(environment.resolve_model(m) for m in environment.available_models())
    assert CodecEnvironment(None).available_models() == []


def _hub(root: Path) -> Path:
    """A hub cache with two complete downloads, one that has not started, and a dataset."""
    hub = root / "hub"
    for repo in ("models--org--name", "models--gpt2"):
        (hub / repo / "snapshots" / "abc123").mkdir(parents=True)
        (hub / repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (hub / "models--org--partial" / "snapshots" / "abc").mkdir(parents=True)
    (hub / "datasets--org--data" / "snapshots" / "abc").mkdir(parents=True)
    return hub


def test_hf_cache_listing_reads_snapshots_with_a_config(tmp_path):
    assert sorted(hf_cached_models(_hub(tmp_path))) == ["gpt2", "org/name"]
    assert list(hf_cached_models(tmp_path / "none")) == []


def test_the_hub_cache_is_found_the_way_the_hub_library_finds_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hf_hub_cache() == tmp_path / "elsewhere"


def test_announced_models_are_only_those_compression_will_find(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub(tmp_path)))
    environment = CodecEnvironment(models_dir)
    announced = environment.available_models()
    assert MODEL in announced
    assert all(environment.resolve_model(model) is not None for model in announced)
