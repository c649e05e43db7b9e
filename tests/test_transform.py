"""NOLA's transform code: the default weight fit, its artifact (format 3), its size search, and the old
formats still read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapters.compress import stfile, transform, transform_read
from adapters.compress.artifact import CODES_KEY, HEADER_KEY, decode_header
from adapters.compress.codec import VERSION_KEY, reconstruct, reconstruct_to_dir
from adapters.compress.errors import InvalidArtifact
from adapters.compress.fidelity import measure
from adapters.compress.nola import NolaCodec, NolaConfig, lora_pairs, prepare, uses_transform
from adapters.compress.peft_io import SAFETENSORS_FILE, LoraCheckpoint, read_adapter
from tests.factories import make_adapter
from tests.factories import rewrite_artifact as _rewrite

DATA = Path(__file__).parent / "data"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _low_rank_like(adapter: LoraCheckpoint, seed: int = 0) -> LoraCheckpoint:
    """The adapter with trained-looking factors: a decaying spectrum over its rank components."""
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(adapter.tensors)
    for p in adapter.pairs:
        decay = torch.logspace(0, -2, p.rank)
        tensors[p.a_key] = torch.randn(p.rank, p.in_features, generator=gen) / p.in_features**0.5
        tensors[p.b_key] = 0.05 * torch.randn(p.out_features, p.rank, generator=gen) * decay
    return LoraCheckpoint(adapter.config, tensors, adapter.pairs)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = make_adapter(
        tmp_path_factory.mktemp("transform") / "adapter",
        r=8,
        target_modules=ALL_LINEAR,
        rank_pattern={"down_proj": 4},
        alpha_pattern={"o_proj": 32},
        modules_to_save=["lm_head"],
    )
    return _low_rank_like(read_adapter(path))


@pytest.fixture(scope="module")
def compressed(adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "adapter.nola"
    report = NolaCodec(NolaConfig(ratio=2)).compress(adapter, out)
    return out, report


def test_the_weight_fit_uses_the_transform_code_by_default(compressed):
    path, report = compressed
    header = decode_header(stfile.read_metadata(path)[HEADER_KEY])
    assert header["layout"] == "transform" and report.params["layout"] == "transform"
    assert stfile.read_metadata(path)[VERSION_KEY] == "3"
    assert header["code"]["model"] == "gaussian-table"
    # The header lists modules, not rows: no per-row sizes, formats or byte ranges.
    assert all(isinstance(m, list) and len(m) == 7 for m in header["modules"])
    assert report.fidelity["coefficient_bytes"] == stfile.load(path)[0][CODES_KEY].numel()


def test_round_trip_keeps_keys_dtypes_rank_and_extras(adapter, compressed):
    path, report = compressed
    back = reconstruct(path)
    assert back.config == adapter.config  # rank_pattern and alpha_pattern included, in their order
    assert "adapters.peft_config" not in stfile.read_metadata(path)  # it travels in the header
    assert back.tensors.keys() == adapter.tensors.keys()
    for key, tensor in adapter.tensors.items():
        assert back.tensors[key].dtype == tensor.dtype and back.tensors[key].shape == tensor.shape
    head = "base_model.model.lm_head.weight"
    assert torch.equal(back.tensors[head], adapter.tensors[head].half().float())  # fp16 by default
    assert report.artifact_bytes == path.stat().st_size
    fid = measure(adapter, back.tensors, lora_pairs(adapter))
    assert fid["weight_rel_error"] == pytest.approx(report.fidelity["weight_rel_error"], abs=1e-6)
    assert fid["weight_rel_error"] < 0.2


def test_the_whole_file_meets_the_ratio(adapter, tmp_path):
    from adapters.compress.codec import canonical_bytes

    source = len(canonical_bytes(adapter))
    for ratio in (3, 4):
        NolaCodec(NolaConfig(ratio=ratio)).compress(adapter, tmp_path / "a.nola")
        assert (tmp_path / "a.nola").stat().st_size <= source / ratio
        assert (tmp_path / "a.nola").stat().st_size >= 0.97 * source / ratio  # the budget is spent


def test_deterministic_bytes_and_reconstruction(adapter, compressed, tmp_path):
    path, _ = compressed
    NolaCodec(NolaConfig(ratio=2)).compress(adapter, tmp_path / "again.nola")
    assert (tmp_path / "again.nola").read_bytes() == path.read_bytes()
    reconstruct_to_dir(path, tmp_path / "one")
    reconstruct_to_dir(path, tmp_path / "two")
    assert (tmp_path / "one" / SAFETENSORS_FILE).read_bytes() == (
        tmp_path / "two" / SAFETENSORS_FILE
    ).read_bytes()


def test_the_encoder_measures_what_a_reader_decodes(adapter):
    """The size search measures the tensors the encoder decoded itself: they are the reader's."""
    from adapters.compress.nola import encode_decoded, fit_budget
    from adapters.compress.stfile import loads

    fitted = fit_budget(prepare(adapter, NolaConfig()), 4000)
    data, _, decoded = encode_decoded(adapter, fitted)
    from adapters.compress.nola import NolaFormat
    from adapters.compress.protocol import decode_with

    back = decode_with(NolaFormat, *loads(data))
    for p in lora_pairs(adapter):
        for key in (p.a_key, p.b_key):
            assert torch.equal(decoded[key], back.tensors[key]) and decoded[key].dtype == torch.float32


def test_decoding_does_not_depend_on_how_modules_are_windowed(compressed, monkeypatch):
    """The reader rotates modules a window at a time, in a second thread: any windowing gives the
    same bits (each row's arithmetic is its own)."""
    path, _ = compressed
    whole = reconstruct(path).tensors
    monkeypatch.setattr(transform_read, "DECODE_ELEMENTS", 1)  # every module a window of its own
    one_by_one = reconstruct(path).tensors
    assert whole.keys() == one_by_one.keys()
    assert all(torch.equal(whole[k], one_by_one[k]) for k in whole)


def test_at_equal_bytes_the_transform_code_beats_the_row_code(adapter, tmp_path):
    errors = {}
    for code in ("rows", "transform"):
        report = NolaCodec(NolaConfig(ratio=2, code=code)).compress(adapter, tmp_path / f"{code}.nola")
        errors[code] = report.fidelity["weight_rel_error"]
        assert (tmp_path / f"{code}.nola").stat().st_size <= report.source_bytes / 2
    assert errors["transform"] < 0.7 * errors["rows"]


def test_a_smaller_budget_costs_fidelity_and_drops_weak_components(adapter):
    prepared = prepare(adapter, NolaConfig())
    coefficients = prepared.transform
    codes = [transform.fit_step(coefficients, budget) for budget in (20000, 8000, 3000)]
    assert [c.nbytes <= b for c, b in zip(codes, (20000, 8000, 3000))] == [True] * 3
    assert codes[0].step < codes[1].step < codes[2].step
    kept = [c.components for c in codes]
    assert kept[0] >= kept[1] >= kept[2] and kept[2] < sum(p.rank for p in lora_pairs(adapter))
    nothing = transform.fit_step(coefficients, 10)  # below the per-component bytes: everything dropped
    assert nothing.components == 0


def test_the_code_is_a_nola_model_over_the_full_size_bases(adapter):
    """Decoding is rotation by the seeded bases: another seed reads the same stream as other factors."""
    pairs = lora_pairs(adapter)
    coefficients = transform.coefficients(adapter, pairs, 0, torch.device("cpu"))
    code = transform.fit_step(coefficients, 20000)
    args = (pairs, [p.scale for p in pairs], code.step, code.bound, code.codes)
    mine, digest = transform_read.decode(*args, 0, torch.device("cpu"))
    other, other_digest = transform_read.decode(*args, 1, torch.device("cpu"))
    assert digest != other_digest
    for (a, b), (a2, b2) in zip(mine, other):
        # The same singular values either way (the rotation is orthonormal) but other factors.
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(torch.linalg.svdvals(b @ a), torch.linalg.svdvals(b2 @ a2), atol=1e-6)
        if (b @ a).norm() > 0:
            assert not torch.allclose(a, a2)
    mine_rel = measure(
        adapter,
        {
            **adapter.tensors,
            **{k: v for p, (a, b) in zip(pairs, mine) for k, v in ((p.a_key, a), (p.b_key, b))},
        },
        pairs,
    )["weight_rel_error"]
    assert mine_rel < 0.2


def test_which_fits_use_it():
    assert uses_transform(NolaConfig(fit="weight"), None)
    assert uses_transform(NolaConfig(), None)
    assert uses_transform(NolaConfig(), {"m": object()})  # statistics: in their metric
    assert uses_transform(NolaConfig(fit="activation"), {"m": object()})
    assert not uses_transform(NolaConfig(bits="int4"), None)
    assert not uses_transform(NolaConfig(basis="dense"), None)
    assert not uses_transform(NolaConfig(code="rows"), None)
    with pytest.raises(ValueError, match="code=transform"):
        NolaConfig(code="transform", bits="int8")
    with pytest.raises(ValueError, match="code must be"):
        NolaConfig(code="zip")
    with pytest.raises(ValueError, match="rounding"):
        NolaConfig(rounding=0.9)


def test_a_version_1_artifact_still_decodes():
    """tests/data/nola-v1.safetensors was written by format 1 (rows layout) from this adapter."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source = read_adapter(
            make_adapter(Path(tmp) / "v1src", r=8, target_modules=["q_proj", "v_proj", "o_proj"])
        )
    path = DATA / "nola-v1.safetensors"
    assert stfile.read_metadata(path)[VERSION_KEY] == "1"
    header = decode_header(stfile.read_metadata(path)[HEADER_KEY])
    back = reconstruct(path)
    assert back.tensors.keys() == source.tensors.keys()
    fid = measure(source, back.tensors, lora_pairs(source))
    assert fid["weight_rel_error"] == pytest.approx(header["fidelity"]["weight_rel_error"], abs=1e-5)


# sha256 of the canonical bytes of what tests/data/nola-v2.safetensors decoded to when the format-2
# writer made it (tests/data: the adapter of the version-1 test at ratio 4).
V2_DECODED = "962e083b6dd995f1fe583d0f2aa66f3238ae026b36bb00d6163209b94f69fafe"


def test_a_version_2_artifact_still_decodes_to_the_same_tensors():
    """Format 2 (a quantized-Gaussian model per symbol, float64 rotation) keeps its own reader."""
    import hashlib

    from adapters.compress.codec import canonical_bytes

    path = DATA / "nola-v2.safetensors"
    assert stfile.read_metadata(path)[VERSION_KEY] == "2"
    header = decode_header(stfile.read_metadata(path)[HEADER_KEY])
    assert header["code"]["model"] == "quantized-gaussian"
    assert hashlib.sha256(canonical_bytes(reconstruct(path))).hexdigest() == V2_DECODED


def test_format_3_rebuilds_what_format_2_math_gives(compressed):
    """The float32 reader with the scaling folded into the coefficients agrees with a float64
    rebuild of the same integers (the format-2 reader's arithmetic) to float32 precision."""
    from adapters.compress.peft_io import LoraPair

    path, _ = compressed
    tensors, metadata = stfile.load(path)
    header = decode_header(metadata[HEADER_KEY])
    pairs = [
        LoraPair(m, "a", "b", "linear", rank, n_in, n_out, scale)
        for m, rank, n_in, n_out, _, _, scale in header["modules"]
    ]
    step, bound = header["code"]["step"], header["code"]["bound"]
    codes = tensors[CODES_KEY].numpy().tobytes()
    args = (pairs, [p.scale for p in pairs], step, bound, codes, 0, torch.device("cpu"))
    fast, digest = transform_read.decode(*args)
    assert digest == header["digest"]
    reference = _float64_rebuild(*args)
    for (a, b), (a64, b64) in zip(fast, reference):
        assert torch.allclose(a.double(), a64, rtol=1e-5, atol=1e-7 * a64.abs().max())
        assert torch.allclose(b.double(), b64, rtol=1e-5, atol=1e-7 * b64.abs().max())


def _float64_rebuild(pairs, scales, step, bound, codes, seed, device):
    """Format 3's integers rebuilt as format 2 rebuilds its own: float64 rotation, column norms
    measured after it."""
    import numpy as np

    from adapters.compress.transform_entropy import Models, spread_codes

    coder = transform._ans().stream.stack.AnsCoder(np.frombuffer(codes, dtype="<u4").astype(np.uint32))
    models = Models(bound)
    ranks = [p.rank for p in pairs]
    weights, spreads = transform._side_values(
        coder.decode(transform._side_model(), len(pairs) + sum(ranks)).astype(np.int64), ranks
    )
    b_rows, a_rows, at = [], [], 0
    for p, w in zip(pairs, weights):
        codes_p = spreads[at : at + p.rank]
        at += p.rank
        qb, qa = np.zeros((p.rank, p.out_features)), np.zeros((p.rank, p.in_features))
        kept = np.flatnonzero(codes_p)
        if kept.size:
            ib = np.stack([coder.decode(models[int(c)], p.out_features) for c in codes_p[kept]]) - bound
            sums = (ib.astype(np.int64) ** 2).sum(1)
            ia = np.stack(
                [coder.decode(models[int(c)], p.in_features) for c in spread_codes(sums, p.in_features)]
            )
            qb[kept] = ib * (step * transform._multiplier(w))
            qa[kept] = (ia - bound) * transform._a_steps(sums)[:, None]
        b_rows.append(torch.from_numpy(qb))
        a_rows.append(torch.from_numpy(qa))
    assert coder.is_empty()
    b_full = transform._expand(b_rows, pairs, "B", seed, device, [])
    a_full = transform._expand(a_rows, pairs, "A", seed, device, [])
    out = []
    for s, a, b in zip(scales, a_full, b_full):
        g = (b.norm(dim=1) / s).sqrt()
        safe = torch.where(g > 0, g, torch.ones_like(g))
        out.append((a * g[:, None], (b / (s * safe)[:, None]).T))
    return out


def _cut_stream(tensors):
    tensors[CODES_KEY] = tensors[CODES_KEY][:-8].clone()


def _drop_module(header):
    header["modules"].pop()


BAD = {
    "wrong version": (
        {"edit_metadata": lambda m: m.update({VERSION_KEY: "4"})},
        "unsupported nola artifact version",
    ),
    "tampered stream": ({"edit_tensors": _cut_stream, "fix_checksum": False}, "checksum mismatch"),
    "cut stream": ({"edit_tensors": _cut_stream}, "corrupt"),
    "module missing": ({"edit_header": _drop_module}, "corrupt|digest"),
    "other digest": ({"edit_header": lambda h: h.update(digest="0" * 16)}, "basis digest mismatch"),
    "other seed": ({"edit_header": lambda h: h["generator"].update(fingerprint="0" * 16)}, "fingerprint"),
    "no config": ({"edit_header": lambda h: h.pop("peft_config")}, "no PEFT config"),
    "no step": ({"edit_header": lambda h: h["code"].pop("step")}, "corrupt"),
    "other model": (
        {"edit_header": lambda h: h["code"].update(model="laplace")},
        "unsupported coefficient model",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_transform_artifacts_are_rejected(compressed, tmp_path, case):
    path, _ = compressed
    edits, message = BAD[case]
    bad = _rewrite(path, tmp_path / "bad.nola", **edits)
    with pytest.raises(InvalidArtifact, match=message):
        reconstruct(bad)


@pytest.mark.parametrize("code", ["transform", "rows"])
def test_extras_at_fp16_halve_the_head_and_read_back_as_fp32(adapter, tmp_path, code):
    head = "base_model.model.lm_head.weight"
    out, exact = tmp_path / "half.nola", tmp_path / "exact.nola"
    NolaCodec(NolaConfig(ratio=1.6, code=code)).compress(adapter, out)  # fp16: the default
    NolaCodec(NolaConfig(ratio=1.6, code=code, extras="exact")).compress(adapter, exact)
    assert torch.equal(reconstruct(exact).tensors[head], adapter.tensors[head])
    assert "fp16_extras" not in decode_header(stfile.read_metadata(exact)[HEADER_KEY])
    tensors, metadata = stfile.load(out)
    assert tensors[head].dtype == torch.float16
    assert decode_header(metadata[HEADER_KEY])["fp16_extras"] == [head]
    back = reconstruct(out)
    assert back.tensors[head].dtype == torch.float32
    assert torch.equal(back.tensors[head], adapter.tensors[head].half().float())
    assert not torch.equal(back.tensors[head], adapter.tensors[head])
    with pytest.raises(ValueError, match="extras"):
        NolaConfig(extras="int4")


def test_side_information_is_coded_as_residuals_and_read_back():
    import numpy as np

    weights = np.array([128, 131, 120], dtype=np.uint8)
    spreads = np.array([90, 85, 80, 0, 70, 0, 0, 0, 1, 255, 254, 253], dtype=np.uint8)
    ranks = [4, 4, 4]
    residuals = transform._side_residuals(weights, spreads, ranks)
    assert np.abs(residuals).max() <= 255 and len(residuals) == 3 + 12
    back_weights, back_spreads = transform._side_values(residuals, ranks)
    assert np.array_equal(back_weights, weights) and np.array_equal(back_spreads, spreads)
    with pytest.raises(ValueError, match="out of range"):
        transform._side_values(residuals + 300, ranks)
