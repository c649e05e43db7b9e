"""Distillation and the fidelity gate, on an adapter trained with PEFT."""

from __future__ import annotations

import pytest
import torch

from adapters.compress import stfile
from adapters.compress.artifact import HEADER_KEY, decode_header
from adapters.compress.calibration import collect_stats, split_texts
from adapters.compress.codec import reconstruct
from adapters.compress.distill import DistillConfig, Teacher, distill
from adapters.compress.errors import CompressError
from adapters.compress.nola import NolaCodec, NolaConfig, fit_adapter, lora_pairs
from adapters.compress.peft_io import read_adapter
from adapters.compress.pipeline import Gate, run
from tests.factories import save_tiny_llama, template_texts, train_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    base = save_tiny_llama(root / "base")
    texts = template_texts(60)
    adapter = train_adapter(base, texts[:40], root / "adapter")
    return base, read_adapter(adapter), texts


def test_distillation_improves_agreement_over_the_activation_fit(trained):
    base, checkpoint, texts = trained
    fit_texts, held_texts = split_texts(texts, 0.3)
    teacher = Teacher(base, checkpoint, torch.device("cpu"), batch_size=8)
    modules = [p.module for p in lora_pairs(checkpoint)]
    stats = collect_stats(teacher.model, teacher.tokenizer, fit_texts, modules)
    initial = fit_adapter(checkpoint, NolaConfig(ratio=12, fit="activation"), stats)
    result = distill(teacher, initial, fit_texts, held_texts, DistillConfig(steps=60, batch_size=8))
    record = result.notes["distill"]
    assert record["kept"] == "distilled" and result.method == "distill"
    assert record["held_out_after"]["agreement"] > record["held_out_before"]["agreement"]
    assert record["held_out_after"]["kl"] < record["held_out_before"]["kl"]
    assert record["loss_last"] < record["loss_first"]
    # The stored coefficients keep their sizes and formats: the byte budget is unchanged.
    for old, new in zip(initial.modules, result.modules):
        for before, after in ((old.stored_a, new.stored_a), (old.stored_b, new.stored_b)):
            assert (before.ks, before.fmts, before.nbytes) == (after.ks, after.fmts, after.nbytes)


def test_the_hidden_state_term_takes_part(trained):
    base, checkpoint, texts = trained
    fit_texts, held_texts = split_texts(texts, 0.3)
    teacher = Teacher(base, checkpoint, torch.device("cpu"), batch_size=8)
    initial = fit_adapter(checkpoint, NolaConfig(ratio=12, fit="weight"))
    runs = {
        w: distill(
            teacher, initial, fit_texts, held_texts, DistillConfig(steps=20, batch_size=8, hidden_weight=w)
        )
        for w in (0.0, 1.0)
    }
    record = runs[1.0].notes["distill"]
    assert record["hidden_weight"] == 1.0 and record["loss_last"] < record["loss_first"]
    # The same batches and start: only the hidden-state term can make the coefficients differ.
    first = [m.stored_a.values(m.stored_a.kmax) for m in runs[0.0].modules]
    second = [m.stored_a.values(m.stored_a.kmax) for m in runs[1.0].modules]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="hidden_weight"):
        DistillConfig(hidden_weight=-1)


def test_pipeline_measures_the_encoded_artifact_and_gates(trained, tmp_path):
    base, checkpoint, texts = trained
    codec = NolaCodec(
        NolaConfig(ratio=12),
        base_model=base,
        texts=texts,
        distill=DistillConfig(steps=30, batch_size=8),
        gate=Gate(min_agreement=0.0),
    )
    report = codec.compress(checkpoint, tmp_path / "a.nola")
    held = report.fidelity["held_out"]
    assert report.params["fit"] == "distill" and held["predictions"] > 0
    assert report.fidelity["gate_passed"] is True and report.fidelity["gate"]["basis"] == "held-out agreement"
    header = decode_header(stfile.read_metadata(tmp_path / "a.nola")[HEADER_KEY])
    assert header["fit"] == "distill" and header["distill"]["steps"] == 30
    assert header["calibration"]["held_out_texts"] == len(split_texts(texts, 0.2)[1])
    # The held-out agreement the gate saw is that of the artifact as a reader rebuilds it.
    rebuilt = reconstruct(tmp_path / "a.nola")
    teacher = Teacher(base, checkpoint, torch.device("cpu"), batch_size=8)
    factors = {k: rebuilt.tensors[k] for p in lora_pairs(checkpoint) for k in (p.a_key, p.b_key)}
    again = teacher.agreement(teacher.outputs(split_texts(texts, 0.2)[1]), teacher.params(factors))
    assert again["agreement"] == held["agreement"]


def test_an_uncompressible_adapter_misses_the_gate(trained):
    base, checkpoint, texts = trained
    # 200x leaves a few coefficients per module: the behaviour cannot survive.
    _, report = run(
        checkpoint, NolaConfig(ratio=200, fit="activation"), base_model=base, texts=texts, gate=Gate()
    )
    assert report.fidelity["gate_passed"] is False
    assert "agreement" in report.fidelity["gate"]["reason"]
    # Without a base model the gate judges the weight error, strictly.
    _, report = run(checkpoint, NolaConfig(ratio=200), gate=Gate())
    assert report.fidelity["gate_passed"] is False and "weight error" in report.fidelity["gate"]["basis"]


def test_distill_needs_a_base_model_and_texts(trained):
    _, checkpoint, _ = trained
    with pytest.raises(CompressError, match="needs a base model"):
        run(checkpoint, NolaConfig(fit="distill"))


@pytest.mark.parametrize("bad", [{"min_agreement": 1.5}, {"max_kl": -1}])
def test_bad_gates(bad):
    with pytest.raises(ValueError):
        Gate(**bad)


def test_codec_parameters_reach_distillation_and_the_gate():
    codec = NolaCodec.from_params(ratio=10, distill_steps=5, min_agreement=0.95)
    assert codec.distill.steps == 5 and codec.gate.min_agreement == 0.95 and codec.config.ratio == 10
    with pytest.raises(ValueError, match="bad NOLA parameters"):
        NolaCodec.from_params(distill_colour=1)
