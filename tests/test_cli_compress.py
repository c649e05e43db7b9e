"""The offline compression commands through click: compress, inspect, reconstruct, calibrate."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from adapters.cli import main
from adapters.compress.peft_io import read_adapter
from tests.factories import SAMPLE_TEXTS, make_adapter, save_tiny_llama


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_adapter(
        root / "adapter", r=8, target_modules=["q_proj", "v_proj", "down_proj"], modules_to_save=["lm_head"]
    )
    save_tiny_llama(root / "base")
    (root / "texts.txt").write_text("\n".join(SAMPLE_TEXTS))
    return root


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERS_HOME", str(tmp_path / "home"))
    from adapters.registry.settings import reset_settings

    reset_settings()

    def invoke(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    yield invoke
    reset_settings()


def test_compress_inspect_reconstruct(run, workdir, tmp_path):
    artifact = tmp_path / "a.nola"
    source = (workdir / "adapter" / "adapter_model.safetensors").stat().st_size
    args = ("--ratio", "2.5", "--no-gate")
    result = run("compress", workdir / "adapter", "-o", artifact, *args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["codec"] == "nola" and report["artifact_bytes"] == artifact.stat().st_size
    # Whole files: the weights file on disk against the artifact, at the ratio asked for.
    assert (
        report["source_bytes"] == source and 0.97 * source / 2.5 <= report["artifact_bytes"] <= source / 2.5
    )
    assert 0 <= report["fidelity"]["weight_rel_error"] < 1 and "gate" not in report["fidelity"]
    human = run("compress", workdir / "adapter", "-o", artifact, *args, "--force")
    assert human.exit_code == 0
    assert "weight" in human.output and "x)" in human.output  # a ratio never comes alone

    shown = run("inspect", artifact)
    assert shown.exit_code == 0
    assert "philox4x32-10" in shown.output and "model.layers.0.mlp.down_proj" in shown.output
    assert "transform code" in shown.output  # the weight fit's default code
    info = json.loads(run("inspect", artifact, "--json").output)
    assert len(info["nola"]["modules"]) == 6 and info["peft_config"]["r"] == 8

    out = tmp_path / "rebuilt"
    assert run("reconstruct", artifact, "-o", out).exit_code == 0
    rebuilt, original = read_adapter(out), read_adapter(workdir / "adapter")
    assert rebuilt.tensors.keys() == original.tensors.keys()
    head = "base_model.model.lm_head.weight"
    # The head travels at fp16 by default (--extras exact keeps it exactly).
    assert torch.equal(rebuilt.tensors[head], original.tensors[head].half().float())


def test_the_gate_sizes_the_artifact(run, tmp_path):
    adapter = make_adapter(tmp_path / "adapter", r=8, target_modules=["q_proj", "v_proj", "up_proj"])
    artifact = tmp_path / "a.nola"
    result = run("compress", adapter, "-o", artifact, "--ratio", "8", "--max-weight-error", "0.05")
    assert result.exit_code == 0, result.output
    assert "passed on data-free proxy: weight error, data-free: within thresholds" in result.output
    assert "search" in result.output and "8x weight" in result.output
    info = json.loads(run("inspect", artifact, "--json").output)
    gate = info["nola"]["gate"]
    assert gate["passed"] and gate["data_free"] and gate["estimate"] <= 0.05
    shown = run("inspect", artifact)
    assert "gate passed on data-free proxy" in shown.output


def test_when_no_size_passes_the_attempt_is_kept_and_the_exit_is_1(run, workdir, tmp_path):
    # The lm_head, kept exactly, takes half the file: no rung from 32x to 2x can be reached.
    artifact = tmp_path / "a.nola"
    result = run("compress", workdir / "adapter", "-o", artifact, "--ratio", "32", "--extras", "exact")
    assert result.exit_code == 1
    assert "no size passed the fidelity gate" in result.output and "out of reach" in result.output
    assert not artifact.exists()


def test_calibrate_then_compress_with_statistics(run, workdir, tmp_path):
    stats = tmp_path / "stats.safetensors"
    result = run(
        "calibrate",
        workdir / "adapter",
        "--base-model",
        workdir / "base",
        "--texts",
        workdir / "texts.txt",
        "-o",
        stats,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["modules"] == 6
    report = json.loads(
        run(
            "compress",
            workdir / "adapter",
            "-o",
            tmp_path / "a.nola",
            "--calibration",
            stats,
            "--ratio",
            "1.5",
            "--no-gate",
            "--json",
        ).output
    )
    assert report["params"]["fit"] == "activation" and "output_rel_error" in report["fidelity"]
    # Texts work directly too, with the base model to run them through.
    report = json.loads(
        run(
            "compress",
            workdir / "adapter",
            "-o",
            tmp_path / "b.nola",
            "--calibration",
            workdir / "texts.txt",
            "--base-model",
            workdir / "base",
            "--ratio",
            "1.5",
            "--no-gate",
            "--steps",
            "5",
            "--json",
        ).output
    )
    assert report["params"]["fit"] in ("activation", "distill")
    calibration = report["fidelity"]["calibration"]
    # The user's 12 texts, topped up from the packaged corpus.
    assert calibration["texts"] == 4096 and report["fidelity"]["held_out"]["predictions"] >= 2000


def test_errors_are_one_line(run, workdir, tmp_path):
    artifact = tmp_path / "a.nola"
    artifact.write_bytes(b"not an artifact")
    result = CliRunner().invoke(main, ["reconstruct", str(artifact), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert not (tmp_path / "x").exists()
    exists = CliRunner().invoke(main, ["compress", str(workdir / "adapter"), "-o", str(artifact)])
    assert exists.exit_code == 1 and "exists" in exists.output
    bad = CliRunner().invoke(
        main, ["compress", str(workdir / "adapter"), "-o", str(tmp_path / "b"), "--ratio", "0.5"]
    )
    assert bad.exit_code == 2 and "ratio" in bad.output
    texts = CliRunner().invoke(
        main,
        [
            "compress",
            str(workdir / "adapter"),
            "-o",
            str(tmp_path / "c"),
            "--calibration",
            str(workdir / "texts.txt"),
        ],
    )
    assert texts.exit_code == 2 and "--base-model" in texts.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_code_and_extras_options(run, workdir, tmp_path):
    artifact = tmp_path / "rows.nola"
    args = ("--ratio", "1.5", "--no-gate", "--code", "rows", "--extras", "fp16", "--json")
    result = run("compress", workdir / "adapter", "-o", artifact, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["params"]["layout"] == "rows" and report["params"]["extras"] == "fp16"
    info = json.loads(run("inspect", artifact, "--json").output)
    assert info["nola"]["fp16_extras"] == ["base_model.model.lm_head.weight"]
    assert run("inspect", artifact).exit_code == 0
    bad = run(
        "compress", workdir / "adapter", "-o", tmp_path / "x.nola", "--code", "transform", "--bits", "int4"
    )
    assert bad.exit_code != 0 and "code=transform" in bad.output and not (tmp_path / "x.nola").exists()
