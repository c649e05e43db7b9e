"""The counter-based generator: published known answers, committed vectors, device independence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapters.compress import philox
from adapters.compress.bases import make_basis
from tests.devices import DEVICES

KNOWN = json.loads((Path(__file__).parent / "data" / "known_answers.json").read_text())

# Philox4x32-10 known-answer vectors from the Random123 distribution (kat_vectors).
RANDOM123_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("counter", "key", "expected"), RANDOM123_KAT)
def test_random123_known_answers(device, counter, key, expected):
    out = philox.philox4x32(
        torch.tensor(counter, dtype=torch.int64, device=device),
        torch.tensor(key, dtype=torch.int64, device=device),
    )
    assert out.cpu().tolist() == list(expected)


def test_key_derivation_is_stable():
    for case in KNOWN["derive_key"]:
        assert list(philox.derive_key(case["seed"], *case["names"])) == case["key"]
    assert philox.derive_key(0, "a", "b") != philox.derive_key(0, "ab")  # names are separated


@pytest.mark.parametrize("device", DEVICES)
def test_committed_streams(device):
    case = KNOWN["words"][0]
    words = philox.random_words(tuple(case["key"]), case["start"], len(case["words"]), case["stream"], device)
    assert words.cpu().tolist() == case["words"]
    case = KNOWN["uniform"][0]
    values = philox.uniform(tuple(case["key"]), case["start"], len(case["values"]), device=device)
    assert [float.hex(v) for v in values.double().cpu().tolist()] == case["values"]
    assert philox.fingerprint(KNOWN["fingerprint"]["seed"], device) == KNOWN["fingerprint"]["value"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["fast", "dense"])
def test_committed_basis_digests(device, family):
    keys = [philox.derive_key(3, f"m{i}", "A") for i in range(3)]
    assert make_basis(family, 96, [5, 40, 96], keys, device).digests() == KNOWN["basis_digests"][family]


def test_chunks_of_a_stream_match_the_whole():
    whole = philox.random_words((5, 9), 0, 103)
    parts = torch.cat([philox.random_words((5, 9), s, min(17, 103 - s)) for s in range(0, 103, 17)])
    assert torch.equal(whole, parts)


def test_batched_keys_match_single_keys():
    keys = torch.tensor([[1, 2], [3, 4]], dtype=torch.int64)
    batched = philox.random_words(keys, 5, 9)
    assert torch.equal(batched[1], philox.random_words((3, 4), 5, 9))


def test_uniform_range_and_moments():
    values = philox.uniform((42, 7), 0, 200_000).double()
    assert values.min() >= -1 and values.max() < 1
    assert abs(float(values.mean())) < 0.01
    assert abs(float((values**2).mean()) - 1 / 3) < 0.01  # Var(U(-1, 1)) = 1/3


def test_streams_and_keys_are_independent():
    a = philox.uniform((1, 1), 0, 50_000, stream=0).double()
    b = philox.uniform((1, 1), 0, 50_000, stream=1).double()
    c = philox.uniform((1, 2), 0, 50_000, stream=0).double()
    for x, y in ((a, b), (a, c)):
        assert abs(float((x * y).mean())) < 0.01  # uncorrelated


def test_input_checks():
    with pytest.raises(ValueError, match="int64"):
        philox.philox4x32(torch.zeros(4, dtype=torch.int32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-negative"):
        philox.random_words((0, 0), -1, 4)
