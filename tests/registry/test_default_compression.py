"""Pushing with no flags compresses: the smallest NOLA artifact that passes the default gate, with its
fidelity stated; raw when asked for; a compressed version is always gated."""

from __future__ import annotations

import json

import pytest

from adapters.compress.gate import DATA_FREE_MAX_WEIGHT_ERROR
from tests.factories import make_adapter

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """Random factors on every linear layer: a weight error that falls smoothly with size."""
    return make_adapter(tmp_path_factory.mktemp("default") / "adapter", r=8, target_modules=ALL_LINEAR)


@pytest.fixture(autouse=True)
def product_default(cli_env):
    cli_env.delenv("ADAPTERS_DEFAULT_CODEC")  # what a user gets: the product's default


def test_a_push_with_no_flags_is_stored_compressed_with_its_fidelity(cli, adapter):
    shown = cli("push", adapter, "--name", "acme/x", "--task", "t").stdout
    assert "codec nola" in shown and "gate       passed on data-free proxy" in shown
    version = json.loads(cli("show", "acme/x", "--json").stdout)["version"]
    compression = version["compression"]
    assert version["codec"] == "nola" and compression["gate_passed"] and compression["data_free"]
    # Whole files: the stored artifact against the stored source, several times smaller.
    assert compression["ratio"] == pytest.approx(version["source_size"] / version["artifact_size"], rel=1e-3)
    assert compression["ratio"] >= 2 and compression["lora_ratio"] > compression["ratio"]
    assert compression["estimate"] <= DATA_FREE_MAX_WEIGHT_ERROR
    assert compression["basis"] == "data-free proxy: weight error" and compression["predictions"] == 0
    text = cli("show", "acme/x").stdout
    assert f"({compression['ratio']:.1f}x)" in text and "search      up to 32x" in text
    # It pulls back as a PEFT directory that loads, close to the original.
    assert cli("pull", "acme/x", "-o", adapter.parent / "pulled", "--force").exit_code == 0


def test_codec_raw_opts_out_and_a_raw_version_is_1x(cli, adapter):
    cli("push", adapter, "--name", "acme/raw", "--task", "t", "--codec", "raw")
    version = json.loads(cli("show", "acme/raw", "--json").stdout)["version"]
    assert version["codec"] == "raw" and version["artifact_size"] == version["source_size"]
    assert version["compression"]["ratio"] == 1.0
    assert "(1.0x)" in cli("show", "acme/raw").stdout


def test_a_compressed_version_is_always_gated(cli, adapter):
    # A ratio and no gate parameter: the default gate still applies and decides.
    cli("push", adapter, "--name", "acme/g", "--task", "t", "--codec", "nola", "--param", "ratio=40")
    version = json.loads(cli("show", "acme/g", "--json").stdout)["version"]
    gate = version["fidelity"]["gate"]
    assert gate["thresholds"]["max_weight_error"] == DATA_FREE_MAX_WEIGHT_ERROR
    assert version["fidelity"]["gate_passed"] is True and gate["estimate"] <= DATA_FREE_MAX_WEIGHT_ERROR
    attempts = version["fidelity"]["search"]["attempts"]
    assert attempts[0]["ratio"] == 40 and not attempts[0]["passed"]  # 40x was tried and judged
