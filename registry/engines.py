"""Which serving engines load an adapter, judged on its compatibility facts (compat.py).

Each engine's limits are written once, as rules over the facts, and read two ways: in Python by
`adapters check` (one reason per broken rule) and as SQL by `adapters ls --engine` (the same rules as
conditions on the latest version's facts, on PostgreSQL and SQLite alike).

Sources: vLLM's `vllm/lora/peft_helper.py` and `lora_model.py` (0.33: refuses `modules_to_save` but
one classification head, DoRA, `lora_bias`, a rank of any module above `--max-lora-rank`, `bias`;
older releases took `bias` with `--enable-lora-bias`; LoRA on embeddings loads, PEFT's trainable
token deltas are no LoRA tensors it parses). SGLang and LoRAX are not covered by the references for
every feature; what is assumed is marked ASSUMED below and in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from .errors import InvalidRequest

ENGINES = ("vllm", "sglang", "lorax")
# vLLM's --max-lora-rank: its default and the values it accepts.
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)

Kind = Literal["false", "empty", "one_of", "none", "at_most"]


@dataclass(frozen=True)
class Rule:
    """A condition on one fact: `false` (a boolean that must be false), `empty` (a list that must be
    empty), `one_of` (a list that is empty or one of `allowed`), `none` (a string that must be
    "none") or `at_most` (a number at most `limit`)."""

    fact: str
    kind: Kind
    reason: Callable[[Any], str]
    limit: int | None = None
    allowed: tuple[str, ...] = ()

    def broken(self, facts: dict[str, Any]) -> bool:
        value = facts.get(self.fact)
        if self.kind == "false":
            return bool(value)
        if self.kind == "empty":
            return bool(value)
        if self.kind == "one_of":
            return bool(value) and (len(value) > 1 or value[0] not in self.allowed)
        if self.kind == "none":
            return str(value or "none") != "none"
        assert self.limit is not None
        return value is None or int(value) > self.limit

    def holds_sql(self, column: Any) -> sa.ColumnElement[bool]:
        """The rule as a condition on a JSON column of facts (NULL, so false, when a fact is missing)."""
        if self.kind == "false":
            return column[self.fact].as_boolean() == sa.false()
        # A list's element i is absent: it has at most i elements (as_string, since SQLite's
        # JSON_QUOTE would turn a missing element into the text 'null').
        known = column[self.fact].as_string().is_not(None)
        first, second = column[(self.fact, 0)].as_string(), column[(self.fact, 1)].as_string()
        if self.kind == "empty":
            return sa.and_(known, first.is_(None))
        if self.kind == "one_of":
            return sa.and_(known, second.is_(None), sa.or_(first.is_(None), first.in_(self.allowed)))
        if self.kind == "none":
            return column[self.fact].as_string() == "none"
        return column[self.fact].as_integer() <= self.limit


@dataclass(frozen=True)
class EngineOptions:
    """How the engine is run: its rank limit (`--max-lora-rank`) and whether bias is enabled."""

    max_lora_rank: int | None = None
    enable_lora_bias: bool = False


@dataclass(frozen=True)
class Engine:
    name: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    assumptions: tuple[str, ...] = ()


def _check_options(engine: str, options: EngineOptions) -> None:
    if engine not in ENGINES:
        raise InvalidRequest(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    rank = options.max_lora_rank
    if rank is not None and rank < 1:
        raise InvalidRequest(f"--max-lora-rank must be positive, got {rank}")
    if engine == "vllm" and rank is not None and rank not in VLLM_MAX_LORA_RANKS:
        allowed = ", ".join(map(str, VLLM_MAX_LORA_RANKS))
        raise InvalidRequest(f"vLLM's --max-lora-rank takes one of {allowed}, not {rank}")


def engine(name: str, options: EngineOptions | None = None) -> Engine:
    """The rules `name` applies when run with `options` (vLLM's rank limit defaults to 16)."""
    options = options or EngineOptions()
    _check_options(name, options)
    dora = Rule("use_dora", "false", lambda _: "DoRA (use_dora): its magnitude vectors are not loaded")
    saved = Rule(
        "modules_to_save",
        "empty",
        lambda v: f"modules_to_save {', '.join(v)}: only LoRA factors are loaded, not whole modules",
    )
    embeddings = Rule(
        "embedding_deltas",
        "false",
        lambda _: "embedding deltas (LoRA on embeddings or trainable_token_indices) are not loaded",
    )
    conv = Rule("conv", "false", lambda _: "LoRA on convolutions is not loaded")
    if name == "vllm":
        rank = options.max_lora_rank or VLLM_DEFAULT_MAX_LORA_RANK
        head = Rule(
            "modules_to_save",
            "one_of",
            lambda v: (
                f"modules_to_save {', '.join(v)}: only LoRA factors and one classification head "
                "(classifier or score) are loaded"
            ),
            allowed=("classifier", "score"),
        )
        tokens = Rule(
            "trainable_token_indices",
            "false",
            lambda _: "trainable_token_indices: PEFT's trainable token deltas are not loaded",
        )
        rules = [
            head,
            dora,
            Rule(
                "max_rank",
                "at_most",
                lambda v: f"rank {v} is above --max-lora-rank {rank} (start vLLM with a larger one)",
                limit=rank,
            ),
            Rule("lora_bias", "false", lambda _: "lora_bias (a bias on lora_B) is not loaded"),
            tokens,
            conv,
        ]
        if not options.enable_lora_bias:
            rules.append(
                Rule(
                    "bias",
                    "none",
                    lambda v: f"bias={v!r} is not loaded (older vLLM releases: --enable-lora-bias)",
                )
            )
        return Engine(
            "vllm",
            tuple(rules),
            (
                "LoRA on embeddings loads where vLLM's model takes LoRA on its embeddings (most decoders)",
                "target modules not checked against the model (vLLM knows which it supports)",
                "--enable-lora-bias exists only in older vLLM releases; 0.33 refuses bias regardless",
            ),
        )
    common = [saved, dora, embeddings, conv]
    bias = [
        Rule("bias", "none", lambda v: f"bias={v!r}: bias tensors are not loaded"),
        Rule("lora_bias", "false", lambda _: "lora_bias (a bias on lora_B) is not loaded"),
    ]
    if name == "sglang":
        rules = common + bias
        if options.max_lora_rank is not None:
            limit = options.max_lora_rank
            rules.append(
                Rule(
                    "max_rank", "at_most", lambda v: f"rank {v} is above --max-lora-rank {limit}", limit=limit
                )
            )
        return Engine(
            "sglang",
            tuple(rules),
            (
                "ASSUMED: SGLang loads only LoRA A/B factors (no DoRA, modules_to_save, bias or "
                "embedding deltas)",
                "without --max-lora-rank SGLang sizes its buffers from the adapters it starts with: "
                "no rank limit checked",
            ),
        )
    scale = Rule(
        "per_module_scale",
        "false",
        lambda _: "per-module rank or alpha (rank_pattern / alpha_pattern): one r and lora_alpha are read",
    )
    rules = [*common, *bias, scale]
    if options.max_lora_rank is not None:
        limit = options.max_lora_rank
        rules.append(
            Rule("max_rank", "at_most", lambda v: f"rank {v} is above the limit {limit}", limit=limit)
        )
    return Engine(
        "lorax",
        tuple(rules),
        (
            "ASSUMED: LoRAX reads r, lora_alpha, use_rslora, target_modules, fan_in_fan_out and "
            "lora_A/lora_B weights only",
        ),
    )


def problems(facts: dict[str, Any] | None, name: str, options: EngineOptions | None = None) -> list[str]:
    """Why engine `name` does not load an adapter with these facts (empty: it loads it)."""
    rules = engine(name, options).rules
    if not facts:
        return ["compatibility unknown: the version was pushed before facts were recorded (push it again)"]
    return [rule.reason(facts.get(rule.fact)) for rule in rules if rule.broken(facts)]


def loads_sql(column: Any, name: str, options: EngineOptions | None = None) -> sa.ColumnElement[bool]:
    """SQL that is true for facts engine `name` loads (false or NULL for unknown facts)."""
    return sa.and_(*(rule.holds_sql(column) for rule in engine(name, options).rules))


@dataclass(frozen=True)
class CompatFilter:
    """Listing filters on the facts of each adapter's latest version. An adapter whose latest version
    has no facts (pushed before they were recorded) matches none of them."""

    max_rank: int | None = None
    no_dora: bool = False
    no_modules_to_save: bool = False
    engine: str | None = None

    def __post_init__(self) -> None:
        if self.max_rank is not None and self.max_rank < 1:
            raise InvalidRequest(f"max rank must be positive, got {self.max_rank}")
        if self.engine is not None:
            engine(self.engine, self.options)  # refuse an unknown engine or rank before any query

    @property
    def options(self) -> EngineOptions:
        # With an engine, --max-rank is the limit it runs with (vLLM's --max-lora-rank).
        return EngineOptions(max_lora_rank=self.max_rank)

    @property
    def active(self) -> bool:
        return self.max_rank is not None or self.no_dora or self.no_modules_to_save or self.engine is not None

    def conditions(self, column: Any) -> list[sa.ColumnElement[bool]]:
        """SQL conditions on a JSON column of facts."""
        found: list[sa.ColumnElement[bool]] = []
        if self.max_rank is not None:
            found.append(Rule("max_rank", "at_most", str, limit=self.max_rank).holds_sql(column))
        if self.no_dora:
            found.append(Rule("use_dora", "false", str).holds_sql(column))
        if self.no_modules_to_save:
            found.append(Rule("modules_to_save", "empty", str).holds_sql(column))
        if self.engine is not None:
            found.append(loads_sql(column, self.engine, self.options))
        return found
