"""The activation-aware transform code: whitened gauge, A rounded with error feedback, read as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.compress import stfile
from adapters.compress.artifact import HEADER_KEY, decode_header
from adapters.compress.codec import reconstruct
from adapters.compress.feedback import feedback_round, inverse_factor, metric_error
from adapters.compress.fidelity import measure
from adapters.compress.nola import NolaCodec, NolaConfig, lora_pairs
from adapters.compress.peft_io import read_adapter
from adapters.compress.stats import InputStats
from tests.factories import make_adapter
from tests.test_transform import ALL_LINEAR, _low_rank_like


def _correlated(n: int, seed: int) -> torch.Tensor:
    """A second moment with a fast-falling spectrum in a random basis (inputs in few directions)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    lam = torch.logspace(1, -3, n, dtype=torch.float64)
    return (q * lam) @ q.T


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = make_adapter(
        tmp_path_factory.mktemp("act") / "adapter",
        r=8,
        target_modules=ALL_LINEAR,
        rank_pattern={"down_proj": 4},
    )
    return _low_rank_like(read_adapter(path), seed=3)


@pytest.fixture(scope="module")
def stats(adapter):
    return {
        p.module: InputStats(p.in_features, 1000, full=_correlated(p.in_features, i).float())
        for i, p in enumerate(adapter.pairs)
    }


def _compress(adapter, stats, path, fit="activation", ratio=6.0):
    cfg = NolaConfig(ratio=ratio, code="transform", fit=fit)
    report = NolaCodec(cfg, stats if fit == "activation" else None).compress(adapter, path)
    return report


def test_error_feedback_beats_plain_rounding_under_correlated_inputs():
    n, r = 64, 6
    metric = _correlated(n, 0)
    gen = np.random.default_rng(0)
    x = gen.normal(0, 1.5, (1, r, n))
    plain = np.sign(x) * np.floor(np.abs(x) + 0.5)
    fed = feedback_round(x, inverse_factor(metric)[None].numpy())
    m = metric.numpy()[None]
    assert metric_error(x, fed, m) < 0.5 * metric_error(x, plain, m)
    # With the identity metric it is plain rounding.
    same = feedback_round(x, inverse_factor(torch.eye(n, dtype=torch.float64))[None].numpy())
    assert np.array_equal(same, plain)


def test_round_trip_bytes_and_the_fit_recorded(adapter, stats, tmp_path):
    out = tmp_path / "a.nola"
    report = _compress(adapter, stats, out)
    header = decode_header(stfile.read_metadata(out)[HEADER_KEY])
    assert header["layout"] == "transform" and report.params["fit"] == "activation"
    assert out.stat().st_size <= report.source_bytes / 6.0
    back = reconstruct(out)
    for p in adapter.pairs:
        for k in (p.a_key, p.b_key):
            assert back.tensors[k].shape == adapter.tensors[k].shape
    err = measure(adapter, back.tensors, lora_pairs(adapter), stats)["output_rel_error"]
    assert err < 0.3


def test_deterministic(adapter, stats, tmp_path):
    _compress(adapter, stats, tmp_path / "a.nola")
    _compress(adapter, stats, tmp_path / "b.nola")
    assert (tmp_path / "a.nola").read_bytes() == (tmp_path / "b.nola").read_bytes()


def test_at_equal_bytes_it_keeps_more_of_the_output_than_the_weight_fit(adapter, stats, tmp_path):
    act, weight = tmp_path / "act.nola", tmp_path / "weight.nola"
    _compress(adapter, stats, act)
    _compress(adapter, stats, weight, fit="weight")
    assert abs(act.stat().st_size - weight.stat().st_size) < 0.03 * weight.stat().st_size
    pairs = lora_pairs(adapter)
    errs = [measure(adapter, reconstruct(p).tensors, pairs, stats)["output_rel_error"] for p in (act, weight)]
    assert errs[0] < 0.9 * errs[1]
