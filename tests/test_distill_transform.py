"""Distillation of the transform code: trained through its quantizer, re-coded exactly within its bytes."""

from __future__ import annotations

import pytest
import torch

from adapters.compress import transform
from adapters.compress.calibration import collect_stats
from adapters.compress.codec import decode_artifact, reconstruct
from adapters.compress.distill import DistillConfig, Teacher
from adapters.compress.distill_transform import distill_transform
from adapters.compress.nola import NolaCodec, NolaConfig, encode, fit_budget, lora_pairs, prepare
from adapters.compress.peft_io import read_adapter
from adapters.compress.stfile import loads
from tests.factories import save_tiny_llama, template_texts, train_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-transform")
    base = save_tiny_llama(root / "base")
    texts = template_texts(120)
    adapter = train_adapter(base, texts[:40], root / "adapter")
    return base, read_adapter(adapter), texts


@pytest.fixture(scope="module", params=["weight", "activation"])
def setup(trained, request):
    base, checkpoint, texts = trained
    teacher = Teacher(base, checkpoint, torch.device("cpu"), batch_size=8)
    fit, validation = texts[:80], texts[80:100]
    stats = None
    if request.param == "activation":
        modules = [p.module for p in lora_pairs(checkpoint)]
        stats = collect_stats(teacher.model, teacher.tokenizer, fit, modules)
    prepared = prepare(checkpoint, NolaConfig(code="transform", fit=request.param), stats)
    initial = fit_budget(prepared, 1500)
    return teacher, teacher.outputs(fit, hidden=True), teacher.outputs(validation), prepared, initial


def _run(setup, **kw):
    teacher, train, validation, prepared, initial = setup
    cfg = DistillConfig(**{"steps": 60, "batch_size": 8, "eval_every": 10, **kw})
    return distill_transform(teacher, initial, prepared.transform, train, validation, cfg)


def test_it_lowers_the_validation_loss_within_the_same_bytes(setup):
    teacher, _, validation, prepared, initial = setup
    result = _run(setup)
    record = result.notes["distill"]
    assert record["kept"] == "distilled" and result.method == "distill"
    assert record["validation_best"] < record["validation_before"]
    assert result.transform.nbytes <= initial.transform.nbytes
    # What the record claims is what the written artifact decodes to.
    assert _kl_of(teacher, validation, prepared, result) < _kl_of(teacher, validation, prepared, initial)


def _kl_of(teacher, validation, prepared, fitted):
    """KL on the validation texts of the artifact as a reader decodes it."""
    data, _ = encode(prepared.checkpoint, fitted)
    decoded = decode_artifact(*loads(data))
    factors = {k: decoded.tensors[k] for p in lora_pairs(prepared.checkpoint) for k in (p.a_key, p.b_key)}
    return teacher.agreement(validation, teacher.params(factors))["kl"]


def test_it_is_deterministic(setup):
    a, b = _run(setup, steps=20), _run(setup, steps=20)
    assert a.transform.codes == b.transform.codes and a.transform.step == b.transform.step


def test_nothing_better_keeps_the_closed_form_code(setup):
    _, _, _, _, initial = setup
    result = _run(setup, steps=10, lr=1e-9)
    assert result.notes["distill"]["kept"] == "initial"
    assert result.transform.codes == initial.transform.codes


def test_the_pipeline_distils_the_transform_code(trained, tmp_path):
    base, checkpoint, texts = trained
    codec = NolaCodec(
        NolaConfig(ratio=4, code="transform"),
        base_model=base,
        texts=texts,
        distill=DistillConfig(steps=20, batch_size=8, eval_every=10),
    )
    out = tmp_path / "a.nola"
    report = codec.compress(checkpoint, out)
    assert report.params["layout"] == transform.LAYOUT
    assert report.fidelity["distill"]["code"] == "transform"
    assert out.stat().st_size <= report.source_bytes / 4
    rebuilt = reconstruct(out)
    assert set(rebuilt.tensors) == set(checkpoint.tensors)
