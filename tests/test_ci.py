"""`adapters ci` on a folder with a good, a bad and an unchanged adapter; the registry's fidelity gate
routing compressed versions to the lossless source or to rejection; base models on the compressing
machine."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapters.cli import main
from adapters.registry.client import LocalRegistry
from adapters.registry.settings import Settings, reset_settings
from tests.factories import make_adapter, save_tiny_llama, template_texts, train_adapter

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _set_base_model(path, model_id="tiny/llama"):
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = model_id
    (path / "adapter_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("ci")
    base = save_tiny_llama(root / "models" / "tiny--llama")
    texts = template_texts(160)
    (root / "texts.txt").write_text("\n".join(texts))
    good = train_adapter(base, texts[:100], root / "adapters" / "good")
    old = train_adapter(base, texts[:100], root / "adapters" / "old", seed=1)
    # Large random fp16 factors: the adapter dominates the model, and its behaviour does not survive
    # even 2x of a half-precision file (8 bits a parameter) at 0.98 agreement.
    bad = make_adapter(root / "adapters" / "bad", r=8, target_modules=ALL_LINEAR)
    gen = torch.Generator().manual_seed(5)
    tensors = {
        k: (torch.randn(v.shape, generator=gen) * 0.5).half()
        for k, v in load_file(bad / "adapter_model.safetensors").items()
    }
    save_file(tensors, bad / "adapter_model.safetensors")
    for path in (good, old, bad):
        _set_base_model(path)
    return root


@pytest.fixture
def env(scenario, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTERS_MODELS_DIR", str(scenario / "models"))
    monkeypatch.setenv("ADAPTERS_CALIBRATION_TEXTS", str(scenario / "texts.txt"))
    reset_settings()
    yield scenario
    reset_settings()


def ci_args(root, *extra):
    return [
        "ci",
        str(root / "adapters"),
        "--namespace",
        "team",
        "--task",
        "demo",
        "--base-model",
        str(root / "models" / "tiny--llama"),
        "--calibration",
        str(root / "texts.txt"),
        "--ratio",
        "4",
        "--min-agreement",
        "0.98",
        "--steps",
        "30",
        *extra,
    ]


def registry():
    return LocalRegistry.from_settings(Settings())


def test_ci_pushes_the_good_fails_the_bad_and_skips_the_unchanged(env, tmp_path):
    with registry() as reg:
        reg.push(env / "adapters" / "old", "team/old", task="demo", codec="raw")
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    args = ci_args(env, "--min-ratio", "1.5", "--report-md", str(md), "--report-json", str(js))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().endswith("1 of 3 adapters failed: team/bad")
    decisions = {a["name"]: a for a in json.loads(js.read_text())["adapters"]}
    assert {n: a["decision"] for n, a in decisions.items()} == {
        "team/bad": "failed",
        "team/good": "pushed",
        "team/old": "unchanged",
    }
    good, bad = decisions["team/good"], decisions["team/bad"]
    # No size of the bad adapter passed: it would be kept lossless, less than the 1.5x asked for.
    assert bad["codec"] == "raw" and bad["ratio"] == 1.0 and "least ratio 1.5x" in bad["detail"]
    assert bad["agreement"] < 0.98 <= good["agreement_bound"] <= good["agreement"]
    assert good["codec"] == "nola" and good["ratio"] >= 2 and good["basis"] == "held-out agreement"
    assert good["predictions"] >= 2000
    text = md.read_text()
    assert "| team/good | pushed | nola |" in text and "| team/bad | failed | raw |" in text
    assert "least ratio 1.5x" in text.splitlines()[2] and "held-out agreement >= 0.98" in text
    with registry() as reg:
        stored = reg.resolve("team/good")
        assert stored.status == "ready" and stored.codec == "nola"
        assert stored.fidelity["setup"]["base_model_found"] is True
        assert stored.fidelity["gate_passed"] is True and stored.fidelity["held_out"]["agreement"] >= 0.98
        assert stored.compression.ratio >= 2 and stored.compression.basis == "held-out agreement"
        assert [a.name for a in reg.list()] == ["team/good", "team/old"]  # bad was never pushed
    shown = CliRunner().invoke(main, ["show", "team/good"])
    assert "gate        passed on held-out agreement, lower bound" in shown.output


def test_at_its_defaults_ci_passes_every_valid_adapter(env):
    # The bad adapter cannot be compressed: it is stored lossless, which meets the least ratio of 1.
    result = CliRunner().invoke(main, ci_args(env, "--dry-run", "--json"))
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    decisions = {a["name"]: a for a in document["adapters"]}
    assert {n: a["decision"] for n, a in decisions.items()} == {
        "team/bad": "passed",
        "team/good": "passed",
        "team/old": "passed",
    }
    assert decisions["team/bad"]["codec"] == "raw" and decisions["team/good"]["codec"] == "nola"
    with registry() as reg:
        assert reg.list() == []  # a dry run pushes nothing


def test_ci_on_a_folder_without_adapters(env, tmp_path):
    result = CliRunner().invoke(main, ["ci", str(tmp_path), "--namespace", "team"])
    assert result.exit_code == 1 and "no adapter directories" in result.output


@pytest.mark.parametrize(
    ("on_gate_fail", "status", "codec"), [("raw", "ready", "raw"), ("reject", "rejected", "nola")]
)
def test_the_gate_routes_an_uncompressible_adapter(env, on_gate_fail, status, codec):
    params = {"ratio": 4, "min_agreement": 0.98, "distill_steps": 20}
    with registry() as reg:
        pushed = reg.push(
            env / "adapters" / "bad",
            "team/bad",
            task="demo",
            codec="nola",
            params=params,
            on_gate_fail=on_gate_fail,
        )
        version = pushed.version
        assert version.status == status and version.codec == codec
        assert version.fidelity["gate_passed"] is False and "agreement" in version.fidelity["gate"]["reason"]
        if status == "ready":  # the lossless source is served, bit for bit
            assert version.artifact_digest == version.source_digest and version.fidelity["fallback"] == "raw"
        else:
            assert "missed the fidelity gate" in version.error
            assert version.artifact_digest is None


def test_without_the_base_model_the_record_says_so(env, monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERS_MODELS_DIR", str(tmp_path / "empty"))
    reset_settings()
    with registry() as reg:
        version = reg.push(
            env / "adapters" / "good",
            "team/good",
            task="demo",
            codec="nola",
            params={"ratio": 4, "min_agreement": 0.9},
        ).version
    assert version.fidelity["setup"]["base_model_found"] is False
    assert "base model not available" in version.fidelity["setup"]["note"]
    gate = version.fidelity["gate"]
    assert gate["data_free"] is True and gate["basis"] == "data-free proxy: weight error"


def test_a_new_model_card_is_new_content(env, tmp_path):
    import shutil

    folder = tmp_path / "adapters" / "old"
    shutil.copytree(env / "adapters" / "old", folder)
    with registry() as reg:
        reg.push(folder, "team/old", task="demo", codec="raw")
    args = ci_args(env, "--dry-run", "--json")
    args[1] = str(tmp_path / "adapters")  # only this copy

    def decision() -> str:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["adapters"][0]["decision"]

    assert decision() == "unchanged"
    (folder / "README.md").write_text("# old, now with a card\n")  # the weights are the same
    assert decision() == "passed"
