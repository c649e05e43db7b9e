"""Distillation, the held-out measurement and the size search with a base model, on an adapter trained
with PEFT on a tiny Llama."""

from __future__ import annotations

import pytest
import torch

from adapters.compress import stfile
from adapters.compress.artifact import HEADER_KEY, decode_header
from adapters.compress.calibration import collect_stats
from adapters.compress.codec import reconstruct
from adapters.compress.distill import DistillConfig, Teacher, distill
from adapters.compress.errors import CompressError
from adapters.compress.gate import Gate
from adapters.compress.nola import NolaCodec, NolaConfig, fit_adapter, lora_pairs
from adapters.compress.peft_io import read_adapter
from adapters.compress.pipeline import run, split_for_predictions
from adapters.compress.search import ladder
from tests.factories import save_tiny_llama, template_texts, train_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    base = save_tiny_llama(root / "base")
    texts = template_texts(120)
    adapter = train_adapter(base, texts[:40], root / "adapter")
    return base, read_adapter(adapter), texts


@pytest.fixture(scope="module")
def setup(trained):
    """The teacher, its outputs on fit and validation texts, and an activation-aware start."""
    base, checkpoint, texts = trained
    teacher = Teacher(base, checkpoint, torch.device("cpu"), batch_size=8)
    fit, validation = texts[:80], texts[80:100]
    modules = [p.module for p in lora_pairs(checkpoint)]
    stats = collect_stats(teacher.model, teacher.tokenizer, fit, modules)
    initial = fit_adapter(checkpoint, NolaConfig(fit="activation", code="rows"), stats, budget=2000)
    return teacher, teacher.outputs(fit, hidden=True), teacher.outputs(validation), initial


def test_distillation_lowers_the_validation_loss_and_keeps_the_sizes(setup):
    teacher, train, validation, initial = setup
    result = distill(
        teacher, initial, train, validation, DistillConfig(steps=60, batch_size=8, eval_every=10)
    )
    record = result.notes["distill"]
    assert record["kept"] == "distilled" and result.method == "distill"
    assert record["validation_best"] < record["validation_before"]
    assert record["loss_last"] < record["loss_first"]
    # The stored coefficients keep their sizes and formats: the byte budget is unchanged.
    for old, new in zip(initial.modules, result.modules):
        for before, after in ((old.stored_a, new.stored_a), (old.stored_b, new.stored_b)):
            assert (before.ks, before.fmts, before.nbytes) == (after.ks, after.fmts, after.nbytes)


def test_distillation_stops_early_and_keeps_the_start_when_nothing_improves(setup):
    teacher, train, validation, initial = setup
    # A step size this large only makes things worse: the first checks see no improvement.
    config = DistillConfig(steps=500, batch_size=8, lr=50.0, eval_every=5, patience=2)
    result = distill(teacher, initial, train, validation, config)
    record = result.notes["distill"]
    assert record["stopped"].startswith("early stop") and record["steps_run"] == 10
    assert record["kept"] == "initial" and result.method == initial.method
    assert all(
        torch.equal(a.stored_a.values(a.stored_a.kmax), b.stored_a.values(b.stored_a.kmax))
        for a, b in zip(initial.modules, result.modules)
    )


def test_distillation_keeps_to_its_time_budget(setup):
    teacher, train, validation, initial = setup
    config = DistillConfig(steps=500, batch_size=8, eval_every=3, max_seconds=1e-3)
    record = distill(teacher, initial, train, validation, config).notes["distill"]
    assert record["steps_run"] == 3 and record["stopped"] == "time budget of 0.001 s"


def test_the_hidden_state_term_takes_part(setup):
    teacher, train, validation, initial = setup
    runs = {
        w: distill(
            teacher,
            initial,
            train,
            validation,
            DistillConfig(steps=20, batch_size=8, hidden_weight=w, eval_every=5, patience=10),
        )
        for w in (0.0, 1.0)
    }
    assert runs[1.0].notes["distill"]["hidden_weight"] == 1.0
    # The same batches and start: only the hidden-state term can make the coefficients differ.
    first = [m.stored_a.values(m.stored_a.kmax) for m in runs[0.0].modules]
    second = [m.stored_a.values(m.stored_a.kmax) for m in runs[1.0].modules]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="hidden_weight"):
        DistillConfig(hidden_weight=-1)


def test_held_out_texts_are_chosen_for_enough_predictions(trained):
    base, checkpoint, texts = trained
    texts = list(dict.fromkeys(texts))  # distinct, so the parts can be told apart
    teacher = Teacher(base, checkpoint, torch.device("cpu"))
    predictions = teacher.predictions(texts)
    # A language model predicts every token: a text gives as many predictions as it has tokens.
    assert predictions == [len(teacher.tokenizer(t)["input_ids"]) for t in texts] and min(predictions) > 10
    split = split_for_predictions(texts, predictions, target=400)
    held = [predictions[texts.index(t)] for t in split.held_out]
    assert split.held_out_predictions == sum(held) >= 400 and sum(held) - held[-1] < 400 + max(held)
    assert not set(split.held_out) & set(split.fit + split.validation)
    assert sorted(split.fit + split.validation + split.held_out) == sorted(texts)
    # At most half the texts are held out, whatever the target.
    assert len(split_for_predictions(texts, predictions, target=10**9).held_out) == len(texts) // 2


def test_the_search_measures_each_artifact_as_a_reader_decodes_it(trained, tmp_path):
    base, checkpoint, texts = trained
    codec = NolaCodec(
        NolaConfig(ratio=3),
        base_model=base,
        texts=texts,
        distill=DistillConfig(steps=20, batch_size=8, eval_every=10),
        gate=Gate(min_agreement=0.0),
        held_out_predictions=300,
    )
    report = codec.compress(checkpoint, tmp_path / "a.nola")
    held, gate = report.fidelity["held_out"], report.fidelity["gate"]
    assert gate["passed"] and gate["basis"] == "held-out agreement" and not gate["data_free"]
    assert gate["predictions"] == held["predictions"] >= 300 and gate["bound"] <= held["agreement"]
    assert report.fidelity["search"]["chosen_ratio"] == 3  # anything passes: the top rung is taken
    calibration = report.fidelity["calibration"]
    assert calibration["held_out_predictions"] == held["predictions"]
    # The artifact records its verdict, and the agreement the gate saw is that of the artifact as
    # a reader rebuilds it.
    header = decode_header(stfile.read_metadata(tmp_path / "a.nola")[HEADER_KEY])
    assert header["gate"] == gate and header["held_out"] == held
    assert report.artifact_bytes == (tmp_path / "a.nola").stat().st_size
    rebuilt = reconstruct(tmp_path / "a.nola")
    factors = {k: rebuilt.tensors[k] for p in lora_pairs(checkpoint) for k in (p.a_key, p.b_key)}
    teacher = Teacher(base, checkpoint, torch.device("cpu"))
    split = split_for_predictions(texts, teacher.predictions(texts), 300)
    again = teacher.agreement(teacher.outputs(split.held_out), teacher.params(factors))
    assert again["agreement"] == held["agreement"]


def test_an_uncompressible_adapter_misses_the_gate_at_every_size(trained):
    base, checkpoint, texts = trained
    _, report = run(
        checkpoint,
        NolaConfig(ratio=40, fit="activation"),
        base_model=base,
        texts=texts,
        gate=Gate(min_agreement=0.999),
        held_out_predictions=300,
    )
    assert report.fidelity["gate_passed"] is False
    assert "agreement" in report.fidelity["gate"]["reason"]
    attempts = report.fidelity["search"]["attempts"]
    assert report.fidelity["search"]["chosen_ratio"] is None and not any(a["passed"] for a in attempts)
    # Top rung and bottom rung tried, nothing else: nothing between can pass.
    assert [a["ratio"] for a in attempts] == [40, ladder(40)[-1]]


def test_a_distilled_attempt_says_how_its_run_went(trained):
    base, checkpoint, texts = trained
    _, report = run(
        checkpoint,
        NolaConfig(ratio=3),
        base_model=base,
        texts=texts,
        distill_config=DistillConfig(steps=20, batch_size=8, eval_every=10),
        gate=Gate(min_agreement=0.9999),
        held_out_predictions=300,
    )
    distilled = [a for a in report.fidelity["search"]["attempts"] if a["method"] == "distill"]
    assert distilled, "nothing passed closed form, so the search distils"
    for attempt in distilled:
        record = attempt["distill"]
        assert 0 < record["steps_run"] <= 20 and record["kept"] in ("distilled", "initial")
        assert record["stopped"] and record["seconds"] >= 0
    assert all("distill" not in a for a in report.fidelity["search"]["attempts"] if a["method"] != "distill")


def test_distill_needs_a_base_model_and_texts(trained):
    _, checkpoint, _ = trained
    with pytest.raises(CompressError, match="needs a base model"):
        run(checkpoint, NolaConfig(fit="distill"))


@pytest.mark.parametrize("bad", [{"steps": -1}, {"eval_every": 0}, {"max_seconds": 0}, {"patience": 0}])
def test_bad_distillation_settings(bad):
    with pytest.raises(ValueError):
        DistillConfig(**bad)


def test_codec_parameters_reach_distillation_and_the_gate():
    codec = NolaCodec.from_params(ratio=10, distill_steps=5, min_agreement=0.95, held_out_predictions=500)
    assert codec.distill.steps == 5 and codec.gate.min_agreement == 0.95 and codec.config.ratio == 10
    assert codec.held_out_predictions == 500
    # Without gate parameters the default gate still applies: a registry version is always gated.
    assert NolaCodec.from_params(ratio=20).gate == Gate()
    with pytest.raises(ValueError, match="bad NOLA parameters"):
        NolaCodec.from_params(distill_colour=1)
    with pytest.raises(ValueError, match="held_out_predictions must be at least"):
        NolaCodec.from_params(held_out_predictions=10)
