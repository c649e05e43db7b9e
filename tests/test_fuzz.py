"""Fuzzing the parsers that read uploads: adapter_config.json (parse, check, validate against
tensors) and the safetensors reader. Whatever the bytes, the only outcomes are a parse or
InvalidAdapter / InvalidArtifact, never another exception. Bounded and derandomized, so CI runs
the same few seconds of examples every time; raise FUZZ_EXAMPLES to search longer."""

from __future__ import annotations

import json
import os
import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.compress import stfile
from adapters.compress.errors import InvalidAdapter, InvalidArtifact
from adapters.compress.peft_io import LoraCheckpoint, check_config, parse_config, validate

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 300,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON values, including what Python's json writes but JSON forbids (NaN, Infinity) and what the
# system cannot store (NUL, unpaired surrogates, huge integers).
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["q_proj", "v_proj", "(a+)+b", "(", r"(a)\1", ".*", "LORA", "none", "CAUSAL_LM"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = """
peft_type r lora_alpha target_modules exclude_modules modules_to_save rank_pattern alpha_pattern use_rslora
bias lora_dropout task_type layers_to_transform layers_pattern init_lora_weights lora_bias use_dora
base_model_name_or_path revision target_parameters
"""
FIELDS = st.sampled_from(_FIELDS.split())
PATTERN_KEYS = st.lists(
    st.sampled_from(["q", "_proj", ".", r"\.", "a+", "(", ")", "|", "*", "[0-9]", r"\d", "x", "{2}"]),
    min_size=1,
    max_size=5,
).map("".join)
CONFIGS = st.fixed_dictionaries(
    {"peft_type": st.just("LORA"), "r": st.sampled_from([2, 4]), "lora_alpha": st.sampled_from([4, 8.0])},
    optional={
        "rank_pattern": st.dictionaries(PATTERN_KEYS, st.sampled_from([2, 4, 0, 2.5]), max_size=3),
        "alpha_pattern": st.dictionaries(PATTERN_KEYS, st.sampled_from([1, 3.5, -1]), max_size=3),
        "target_modules": VALUES,
        "use_rslora": VALUES,
    },
) | st.dictionaries(FIELDS, VALUES, max_size=8)
VALID = json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}).encode()


def _config_outcome(data: bytes) -> None:
    try:
        config = parse_config(data)
        check_config(config)
    except InvalidAdapter:
        return
    assert isinstance(config, dict)


@FUZZ
@given(st.binary(max_size=256))
def test_config_bytes(data):
    _config_outcome(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.binary(max_size=4)), max_size=4))
def test_config_mutations(edits):
    data = bytearray(VALID)
    for at, insert in edits:
        data[at : at + len(insert)] = insert
    _config_outcome(bytes(data))


@FUZZ
@given(CONFIGS, st.sampled_from(["q_proj", "self_attn.q_proj", "x.aaaa", "q.proj", "ä"]))
def test_config_values_against_tensors(config, module):
    _config_outcome(json.dumps(config).encode())  # json.dumps writes NaN, Infinity, NUL, surrogates
    tensors = {
        f"base_model.model.layers.0.{module}.lora_A.weight": torch.ones(4, 3),
        f"base_model.model.layers.0.{module}.lora_B.weight": torch.ones(5, 4),
    }
    try:
        checkpoint = validate(config, tensors)
    except InvalidAdapter:
        return
    assert isinstance(checkpoint, LoraCheckpoint) and len(checkpoint.pairs) == 1


SMALL_FILE = stfile.dumps({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, {"format": "pt"})
DTYPES = st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "X", ""]) | VALUES


def _header_outcome(data: bytes) -> None:
    try:
        tensors, metadata = stfile.loads(data)
    except InvalidArtifact:
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    assert all(isinstance(v, str) for v in metadata.values())


@FUZZ
@given(st.binary(max_size=256))
def test_safetensors_bytes(data):
    _header_outcome(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SMALL_FILE)), st.binary(min_size=1, max_size=4)), max_size=4))
def test_safetensors_mutations(edits):
    data = bytearray(SMALL_FILE)
    for at, insert in edits:
        data[at : at + len(insert)] = insert
    _header_outcome(bytes(data))


ENTRIES = (
    st.fixed_dictionaries(
        {
            "dtype": DTYPES,
            "shape": st.lists(st.integers(-2, 4), max_size=3) | VALUES,
            "data_offsets": st.lists(st.integers(-2, 40), min_size=2, max_size=2) | VALUES,
        }
    )
    | VALUES
)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=6), ENTRIES, max_size=4),
    st.one_of(st.none(), VALUES),
    st.binary(max_size=40),
    st.integers(-3, 3),
)
def test_safetensors_headers(entries, metadata, data, skew):
    header = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    declared = max(0, len(text) + skew)
    _header_outcome(struct.pack("<Q", declared) + text + data)
