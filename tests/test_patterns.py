"""rank_pattern / alpha_pattern: PEFT's matching rule on RE2, which runs in linear time, and the
patterns it cannot run refused with a reason."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.utils.other import get_pattern_key

from adapters.compress import peft_io
from adapters.compress.errors import InvalidAdapter
from adapters.compress.patterns import TEMPLATE, PatternTable, compile_key

MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.10.self_attn.v_proj",
    "model.layers.0.mlp.down_proj",
    "model.embed_tokens",
    "lm_head",
    "q_proj",
    "model.layers.0.self_attn.q_proj_extra",
    "layers.0.self_attn.q_proj",
]
TABLES = [
    {"q_proj": 2, "layers.0.self_attn.q_proj": 6},  # order decides: q_proj wins everywhere
    {"layers.0.self_attn.q_proj": 6, "q_proj": 2},
    {"model.layers.0.self_attn.q_proj": 5},  # the whole name
    {r"layers\.\d+\.self_attn\.(q|v)_proj": 3, "down_proj": 7},
    {".*_proj": 9},
    {"self_attn": 4},  # a middle segment alone matches nothing
    {"proj": 4},  # nor does part of a segment
    {"a)|(b": 1},  # PEFT's template around an unbalanced key: an alternation at the top
    {"(?i:Q_PROJ)": 8},
    {"layers.1": 2, "lm_head|embed_tokens": 3},
]


@pytest.mark.parametrize("table", TABLES, ids=[str(t) for t in TABLES])
def test_lookup_gives_what_peft_gives(table):
    patterns = PatternTable("rank_pattern", table)
    for module in MODULES:
        key = get_pattern_key(table.keys(), module)  # PEFT's own function
        assert patterns.lookup(module) == table.get(key), module


def test_a_literal_key_that_does_not_match_itself_still_applies_by_name():
    # PEFT falls back to the module's own name when no key matches as a pattern.
    table = {"x+y": 3}
    assert get_pattern_key(table.keys(), "x+y") == "x+y"
    assert PatternTable("rank_pattern", table).lookup("x+y") == 3
    assert PatternTable("rank_pattern", table).lookup("xxy") == 3  # and as a pattern it matches this


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (r"(a)\1", "backreferences and octal escapes"),
        (r"(?P<x>a)(?P=x)", "cannot be matched in linear time"),
        ("q(?=_proj)", "cannot be matched in linear time"),
        ("(?<!k)_proj", "cannot be matched in linear time"),
        ("(?>a+)b", "cannot be matched in linear time"),
        ("a++b", "cannot be matched in linear time"),
        (r"q_proj\Z", "cannot be matched in linear time"),
        ("a{1001}", "cannot be matched in linear time"),
        ("(", "not a valid regular expression"),
        ("[[:alpha:]]+", "not a valid regular expression"),
        ("(?i)q_proj", "not a valid regular expression"),  # a global flag inside PEFT's template
        ("a{,3}", "write a repeat"),
        ("q_pröj", "printable ASCII"),
        ("q_proj\n", "printable ASCII"),
        ("a" * 4097, "longer than 4096"),
    ],
)
def test_patterns_that_cannot_be_run_like_peft_are_refused(key, reason):
    with pytest.raises(InvalidAdapter, match=re.escape(reason)):
        PatternTable("alpha_pattern", {"q_proj": 1, key: 2})


def test_the_refusal_names_the_field_and_the_pattern():
    with pytest.raises(InvalidAdapter, match=r"^config field rank_pattern: pattern '\(a\)\\\\1'"):
        peft_io.check_config({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {r"(a)\1": 2}})


def test_module_names_outside_printable_ascii_cannot_be_matched():
    table = PatternTable("rank_pattern", {r"\d": 2})
    with pytest.raises(InvalidAdapter, match="printable ASCII"):
        table.lookup("layers.٣")  # Python's \d matches this Arabic-Indic digit, RE2's does not
    assert PatternTable("rank_pattern", {}).lookup("layers.٣") is None  # no patterns: nothing to match


def test_matching_is_linear_in_the_module_name():
    # (a+)+b against x.aaa...a backtracks 2^n steps in Python's re: n = 27 froze a server for 27 s.
    # Guarded by a subprocess so that a regression fails the test instead of hanging the suite.
    code = textwrap.dedent(
        """
        from adapters.compress.peft_io import module_rank_alpha
        config = {"r": 4, "lora_alpha": 8, "rank_pattern": {"(a+)+b": 8}}
        print(module_rank_alpha(config, "x." + "a" * 60))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(4, 8.0)"
    assert re2.compile(TEMPLATE.format(key="(a+)+b")).match("x." + "a" * 10**6) is None


def test_too_many_pattern_matches_are_refused_before_matching(monkeypatch):
    monkeypatch.setattr(peft_io, "MAX_PATTERN_MATCHES", 10)
    rules = peft_io.RankRules.of(
        {"r": 4, "lora_alpha": 8, "rank_pattern": {f"layers.{i}.q_proj": 2 for i in range(4)}}
    )
    rules.check_work(2)  # 8 matches
    with pytest.raises(InvalidAdapter, match="rank_pattern has 4 patterns for 3 modules"):
        rules.check_work(3)


# Regex pieces for the property test: what module-name patterns are made of, and some that need care.
_PIECES = r"""
a b q _ . \. proj layers 0 1 \d \w \s \b \B [a-c] [^a] []a] * + ? *? {2} {1,2} {,2} | ( ) (?: ^ $ \A
(?i: (?s: (?m: - [.] \x61 \ \1
"""
PIECES = st.sampled_from([*_PIECES.split(), " "])
NAMES = st.text(alphabet="abq_.01 pxyz\t\n", max_size=12)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.lists(PIECES, min_size=1, max_size=8).map("".join), NAMES)
def test_re2_and_python_agree_on_every_pattern_accepted(key, module):
    try:
        program = compile_key(key)
    except InvalidAdapter:
        return  # refused: never matched
    table = PatternTable("rank_pattern", {key: 1})
    try:
        ours = table.lookup(module)
    except InvalidAdapter:
        assert not module.isascii() or not module.isprintable()
        return
    python = re.match(TEMPLATE.format(key=key), module) is not None
    assert (program.match(module) is not None) == python
    assert (ours is not None) == (python or key == module)


def test_loading_an_upload_with_peft_runs_none_of_its_patterns():
    """A worker with the base model loads the adapter with PEFT, which matches rank_pattern keys and
    a string target_modules with Python's re against the base model's module names: (.|.)*Z takes
    2^31 steps on model.layers.0.self_attn.q_proj. The loading config has none of them."""
    code = textwrap.dedent(
        """
        import tempfile
        from pathlib import Path
        from adapters.compress.calibration import with_adapter
        from adapters.compress.peft_io import check_config, read_adapter
        from tests.factories import make_adapter, tiny_llama

        checkpoint = read_adapter(make_adapter(Path(tempfile.mkdtemp()) / "a", seed=1))
        checkpoint.config.update(
            target_modules="(.|.)*(q|v)_proj", rank_pattern={"(.|.)*Z": 8}, alpha_pattern={"(.|.)*Y": 2}
        )
        check_config(checkpoint.config)  # accepted: RE2 runs these in linear time
        model = with_adapter(tiny_llama(1), checkpoint)
        print(sorted(n for n, _ in model.named_modules() if n.endswith("lora_A.default"))[:1])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['base_model.model.model.layers.0.self_attn.q_proj.lora_A.default']"


def test_the_loading_config_builds_the_same_model(tmp_path):
    import torch
    from peft import PeftModel

    from adapters.compress.calibration import with_adapter
    from adapters.compress.peft_io import loading_config, read_adapter
    from tests.factories import make_adapter, tiny_llama, token_batch

    source = make_adapter(
        tmp_path / "a",
        seed=2,
        target_modules=r".*\.(q_proj|v_proj|down_proj)",
        rank_pattern={"down_proj": 2, r"layers\.1\..*q_proj": 6},
        alpha_pattern={"layers.1.self_attn.q_proj": 3},
        modules_to_save=["lm_head"],
    )
    checkpoint = read_adapter(source)
    config = loading_config(checkpoint)
    assert config["target_modules"] == sorted(p.module for p in checkpoint.pairs)
    assert config["rank_pattern"] == {
        "^(?:model\\.layers\\.0\\.mlp\\.down_proj|model\\.layers\\.1\\.mlp\\.down_proj)": 2,
        "^(?:model\\.layers\\.1\\.self_attn\\.q_proj)": 6,
    }
    batch = token_batch(seed=2)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(tiny_llama(2), str(source)).eval()(batch).logits
        actual = with_adapter(tiny_llama(2), checkpoint, tmp_path / "loaded")(batch).logits
    assert torch.equal(expected, actual)
