"""Compatibility facts recorded at push, the listing filters on them, and `adapters check`, on
SQLite + a folder and PostgreSQL + S3, with adapters PEFT saved."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from adapters.registry.db import Database, JSONType
from adapters.registry.engines import CompatFilter, EngineOptions, problems
from adapters.registry.errors import InvalidRequest
from tests.engine_variants import variants  # noqa: F401 - fixture


@pytest.fixture
def pushed(registry, variants):  # noqa: F811
    """Every variant pushed as acme/<variant>."""
    for name, path in variants.items():
        registry.push(path, f"acme/{name}", task="chat")
    return registry


def names(found) -> list[str]:
    return [a.name.split("/")[1] for a in found]


def test_push_records_the_facts(pushed):
    plain = pushed.resolve("acme/plain").compat
    assert plain["max_rank"] == 4 and plain["lora_alpha"] == 8 and plain["lora_modules"] == 4
    assert plain["target_modules"] == ["q_proj", "v_proj"] and plain["dtypes"] == ["float32"]
    assert not plain["use_dora"] and plain["modules_to_save"] == [] and plain["bias"] == "none"
    assert not plain["embedding_deltas"]
    assert pushed.resolve("acme/dora").compat["use_dora"] is True
    assert pushed.resolve("acme/saved").compat["modules_to_save"] == ["lm_head"]
    assert pushed.resolve("acme/biased").compat["bias"] == "lora_only"
    patterned = pushed.resolve("acme/patterned").compat
    assert (patterned["min_rank"], patterned["max_rank"], patterned["r"]) == (4, 8, 4)
    assert patterned["ranks"] == {f"model.layers.{i}.self_attn.q_proj": 8 for i in (0, 1)}
    assert patterned["alphas"] == {f"model.layers.{i}.self_attn.v_proj": 2.0 for i in (0, 1)}
    embedding = pushed.resolve("acme/embedding").compat
    assert embedding["embedding_deltas"] and embedding["embedding_modules"] == ["model.embed_tokens"]


def test_listing_filters_on_the_latest_versions_facts(pushed, other_adapter_dir):
    every = names(pushed.list())
    assert names(pushed.list(compat=CompatFilter(max_rank=8))) == [n for n in every if n != "wide"]
    assert names(pushed.list(compat=CompatFilter(max_rank=4))) == [
        n for n in every if n not in ("wide", "patterned")
    ]
    assert "dora" not in names(pushed.list(compat=CompatFilter(no_dora=True)))
    assert len(names(pushed.list(compat=CompatFilter(no_dora=True)))) == len(every) - 1
    assert names(pushed.list(compat=CompatFilter(no_modules_to_save=True))) == [
        n for n in every if n != "saved"
    ]
    assert names(pushed.list(compat=CompatFilter(engine="vllm"))) == ["embedding", "patterned", "plain"]
    # With an engine, --max-rank is its rank limit.
    assert names(pushed.list(compat=CompatFilter(engine="vllm", max_rank=32))) == [
        "embedding",
        "patterned",
        "plain",
        "wide",
    ]
    assert names(pushed.list(compat=CompatFilter(engine="lorax"))) == ["plain", "wide"]
    assert names(pushed.list(compat=CompatFilter(engine="sglang"))) == [
        "patterned",
        "plain",
        "wide",
    ]
    # The latest version decides: a DoRA-free version 2 of acme/dora makes it pass.
    pushed.push(other_adapter_dir, "acme/dora")
    assert "dora" in names(pushed.list(compat=CompatFilter(no_dora=True)))
    pushed.yank("acme/dora:2")
    assert "dora" not in names(pushed.list(compat=CompatFilter(no_dora=True)))


def test_engine_rules_name_every_reason(pushed):
    def why(ref: str, engine: str, **options) -> list[str]:
        return problems(pushed.resolve(ref).compat, engine, EngineOptions(**options))

    assert why("acme/plain", "vllm") == []
    assert why("acme/dora", "vllm") == ["DoRA (use_dora): its magnitude vectors are not loaded"]
    assert why("acme/wide", "vllm") == ["rank 32 is above --max-lora-rank 16 (start vLLM with a larger one)"]
    assert why("acme/wide", "vllm", max_lora_rank=32) == []
    assert why("acme/biased", "vllm") == [
        "bias='lora_only' is not loaded (older vLLM releases: --enable-lora-bias)"
    ]
    assert why("acme/biased", "vllm", enable_lora_bias=True) == []
    assert "modules_to_save lm_head" in why("acme/saved", "vllm")[0]
    assert why("acme/embedding", "vllm") == []  # vLLM takes LoRA on embeddings
    assert "embedding deltas" in why("acme/embedding", "sglang")[0]
    # One classification head is what vLLM loads besides LoRA factors.
    plain = pushed.resolve("acme/plain").compat
    assert problems(plain | {"modules_to_save": ["score"]}, "vllm") == []
    assert len(problems(plain | {"modules_to_save": ["classifier", "score"]}, "vllm")) == 1
    assert len(problems(plain | {"trainable_token_indices": True}, "vllm")) == 1
    assert "rank_pattern" in why("acme/patterned", "lorax")[0]
    assert why("acme/wide", "sglang", max_lora_rank=16) == ["rank 32 is above --max-lora-rank 16"]
    with pytest.raises(InvalidRequest, match="one of 8, 16, 32"):
        problems({}, "vllm", EngineOptions(max_lora_rank=24))
    with pytest.raises(InvalidRequest, match="unknown engine"):
        CompatFilter(engine="tgi")


def test_migration_0005_leaves_older_versions_unknown(fresh_db_url):
    from adapters.registry.db import downgrade

    db = Database(fresh_db_url)
    db.upgrade("0004")
    digest = "ab" * 32
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO adapters (namespace, name, task) VALUES ('acme', 'old', 't')"))
        conn.execute(sa.text("INSERT INTO blobs (sha256, size) VALUES (:d, 10)"), {"d": digest})
        conn.execute(
            sa.text(
                "INSERT INTO versions (adapter_id, number, status, source_digest, source_size, requested, "
                "peft_config) SELECT id, 1, 'pending', :d, 10, '{}', '{}' FROM adapters"
            ),
            {"d": digest},
        )
    db.upgrade()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT compat FROM versions")).scalar_one() is None
    downgrade(db.engine, "0004")
    with db.engine.connect() as conn:
        columns = sa.inspect(conn).get_columns("versions")
    assert "compat" not in {c["name"] for c in columns}
    db.dispose()


def test_versions_from_before_the_facts_are_unknown(backend, registry, variants, cli):  # noqa: F811
    registry.push(variants["plain"], "acme/old", task="chat")
    database = Database(backend.database_url)
    with database.engine.begin() as conn:  # as migration 0005 left older rows
        conn.execute(sa.text("UPDATE versions SET compat = NULL"))
    database.dispose()
    assert registry.resolve("acme/old").compat is None
    assert registry.list(compat=CompatFilter(no_dora=True)) == []
    assert "unknown" in cli("show", "acme/old").stdout
    out = cli("check", "acme/old", "--engine", "vllm", code=1).stdout
    assert "compatibility unknown" in out


def test_engine_filter_allows_one_classification_head(backend, registry, variants):  # noqa: F811
    for name in ("head", "heads", "lm"):
        registry.push(variants["plain"], f"acme/{name}", task="chat")
    saved = {"head": ["score"], "heads": ["classifier", "score"], "lm": ["lm_head"]}
    facts = {n: registry.resolve(f"acme/{n}").compat | {"modules_to_save": m} for n, m in saved.items()}
    database = Database(backend.database_url)
    with database.engine.begin() as conn:
        for name in saved:
            conn.execute(
                sa.text(
                    "UPDATE versions SET compat = :facts WHERE adapter_id = "
                    "(SELECT id FROM adapters WHERE name = :name)"
                ).bindparams(sa.bindparam("facts", type_=JSONType)),
                {"facts": facts[name], "name": name},
            )
    database.dispose()
    assert names(registry.list(compat=CompatFilter(engine="vllm"))) == ["head"]
    assert names(registry.list(compat=CompatFilter(no_modules_to_save=True))) == []


def test_check_command(registry, variants, cli):  # noqa: F811
    for name in ("plain", "saved", "wide"):
        registry.push(variants[name], f"acme/{name}", task="chat")
    assert cli("check", "acme/plain", "--engine", "vllm").stdout.strip() == "vllm loads acme/plain:1"
    refused = cli("check", "acme/saved", "--engine", "vllm", code=1).stdout.strip().splitlines()
    assert refused == [
        "acme/saved:1: modules_to_save lm_head: only LoRA factors and one classification head "
        "(classifier or score) are loaded"
    ]
    body = json.loads(cli("check", "acme/wide", "--engine", "vllm", "--json", code=1).stdout)
    assert body["loads"] is False and body["facts"]["max_rank"] == 32 and len(body["reasons"]) == 1
    assert json.loads(
        cli("check", "acme/wide", "--engine", "vllm", "--max-lora-rank", "64", "--json").stdout
    )["loads"]
    bad = cli("check", "acme/wide", "--engine", "vllm", "--max-lora-rank", "24", code=1)
    assert "one of 8, 16, 32" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    listed = json.loads(cli("ls", "--engine", "vllm", "--json").stdout)["adapters"]
    assert [a["name"] for a in listed] == ["acme/plain"]
    shown = cli("show", "acme/wide").stdout
    assert "r=32 alpha=64" in shown and "modules_to_save=none" in shown
