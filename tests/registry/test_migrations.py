"""The schema comes from Alembic alone, identical on PostgreSQL and SQLite, and enforces invariants."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from adapters.registry import db as registry_db
from adapters.registry import models
from adapters.registry.db import Database, current_revision, downgrade, head_revision, upgrade
from adapters.registry.errors import SchemaOutdated

DIGEST = "a" * 64
OTHER = "b" * 64


def _drift(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": registry_db.ours}
        )
        return compare_metadata(context, models.Base.metadata)


def test_upgrade_head_matches_the_models(fresh_db_url):
    db = Database(fresh_db_url)
    with pytest.raises(SchemaOutdated, match="adapters db upgrade"):
        db.check_schema()
    assert db.upgrade() == head_revision()
    db.check_schema()
    assert _drift(db.engine) == []
    db.dispose()


def test_drift_check_notices_a_model_change(fresh_db_url):
    db = Database(fresh_db_url)
    db.upgrade()
    extra = sa.Table("not_migrated", models.Base.metadata, sa.Column("id", sa.Integer, primary_key=True))
    try:
        assert any(diff[0] == "add_table" and diff[1].name == "not_migrated" for diff in _drift(db.engine))
    finally:
        models.Base.metadata.remove(extra)
    db.dispose()


def test_downgrade_to_base_and_back(fresh_db_url):

    db = Database(fresh_db_url)
    db.upgrade()
    downgrade(db.engine, "base")
    assert current_revision(db.engine) is None
    assert set(sa.inspect(db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(db.engine)
    assert _drift(db.engine) == []
    db.dispose()


def _adapter(session: Session, namespace: str = "acme", name: str = "x", **kw) -> int:
    return session.execute(
        sa.insert(models.Adapter)
        .values(namespace=namespace, name=name, task="t", **kw)
        .returning(models.Adapter.id)
    ).scalar_one()


def _blob(session: Session, digest: str = DIGEST) -> str:
    session.execute(sa.insert(models.Blob).values(sha256=digest, size=10))
    return digest


def _version_row(adapter_id: int, number: int, **kw) -> sa.Insert:
    values = {
        "adapter_id": adapter_id,
        "number": number,
        "source_digest": DIGEST,
        "source_size": 10,
        "requested": {"codec": "raw"},
        "peft_config": {"peft_type": "LORA"},
    } | kw
    return sa.insert(models.Version).values(**values).returning(models.Version.id)


def _version(session: Session, adapter_id: int, number: int, **kw) -> int:
    return session.execute(_version_row(adapter_id, number, **kw)).scalar_one()


# Constraint violations; PostgreSQL reports an over-long value as a DataError before any CHECK runs.
REFUSED = (sa.exc.IntegrityError, sa.exc.DataError)


def _rejected(session: Session, statement) -> None:
    with pytest.raises(REFUSED), session.begin_nested():
        session.execute(statement)


def test_database_rejects_bad_names_and_digests(session):
    for namespace, name in [
        ("Acme", "x"),
        ("acme", "-x"),
        ("acme", "x/y"),
        ("acme", "a" * 65),
        ("acme", "x\n"),
    ]:
        _rejected(session, sa.insert(models.Adapter).values(namespace=namespace, name=name, task="t"))
    for digest in ["A" * 64, "a" * 63, "g" * 64, "a" * 64 + "\n"]:
        _rejected(session, sa.insert(models.Blob).values(sha256=digest, size=1))
    _rejected(session, sa.insert(models.Blob).values(sha256=DIGEST, size=-1))
    adapter_id = _adapter(session)
    _rejected(session, sa.insert(models.AdapterTag).values(adapter_id=adapter_id, tag="Bad Tag"))
    _rejected(session, sa.insert(models.Adapter).values(namespace="acme", name="x", task="t"))  # unique


def test_database_enforces_version_invariants(session):
    adapter_id, _ = _adapter(session), _blob(session)
    version_id = _version(session, adapter_id, 1)
    _blob(session, OTHER)
    _rejected(session, _version_row(adapter_id, 1, source_digest=OTHER))  # number taken
    _rejected(session, _version_row(adapter_id, 2))  # a second live version of the same content
    _rejected(session, _version_row(adapter_id, 2, source_digest="c" * 64))  # blob never recorded
    _rejected(session, _version_row(adapter_id, 0, source_digest=OTHER))  # numbers start at 1
    version = sa.update(models.Version).where(models.Version.id == version_id)
    _rejected(session, version.values(status="ready"))  # ready without an artifact
    _rejected(session, version.values(status="done"))
    _rejected(session, version.values(yanked_at=sa.func.now()))  # only ready versions are yanked
    # A failed version frees its content for a new push.
    session.execute(version.values(status="failed", error="boom"))
    _version(session, adapter_id, 2)


def test_aliases_point_into_their_own_adapter(session):
    first, second, _ = _adapter(session, name="one"), _adapter(session, name="two"), _blob(session)
    version_id = _version(session, first, 1)
    session.execute(sa.insert(models.Alias).values(adapter_id=first, name="prod", version_id=version_id))
    _rejected(session, sa.insert(models.Alias).values(adapter_id=second, name="prod", version_id=version_id))
    _rejected(session, sa.insert(models.Alias).values(adapter_id=first, name="latest", version_id=version_id))
    _rejected(session, sa.insert(models.Alias).values(adapter_id=first, name="Prod!", version_id=version_id))


def test_0002_gives_versions_left_compressing_an_expired_lease(fresh_db_url):
    db = Database(fresh_db_url)
    db.upgrade("0001")
    with db.engine.begin() as conn:
        adapter_id = conn.execute(
            sa.text("INSERT INTO adapters (namespace, name, task) VALUES ('acme', 'x', 't') RETURNING id")
        ).scalar_one()
        for digest in (DIGEST, OTHER):
            conn.execute(sa.text(f"INSERT INTO blobs (sha256, size) VALUES ('{digest}', 10)"))
        for number, status in [(1, "compressing"), (2, "pending")]:
            conn.execute(
                sa.text(
                    "INSERT INTO versions (adapter_id, number, status, source_digest, source_size, requested,"
                    " peft_config) VALUES (:a, :n, :s, :d, 10, '{}', '{}')"
                ),
                {"a": adapter_id, "n": number, "s": status, "d": DIGEST if number == 1 else OTHER},
            )
    db.upgrade()
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT number, attempts, leased_by, lease_expires_at FROM versions ORDER BY number")
        ).all()
    assert rows[0].attempts == 1 and rows[0].leased_by and rows[0].lease_expires_at is not None
    assert (rows[1].attempts, rows[1].leased_by, rows[1].lease_expires_at) == (0, None, None)
    db.dispose()


def test_0003_gives_queued_versions_the_base_model_their_codec_wants(fresh_db_url):
    db = Database(fresh_db_url)
    db.upgrade("0002")
    rows = [  # (number, status, codec, whether the adapter names a base model, the config's base model)
        (1, "pending", "nola", True, None),
        (2, "compressing", "nola", False, "org/from-config"),
        (3, "pending", "raw", True, None),
        (4, "ready", "nola", True, None),
    ]
    insert = sa.text(
        "INSERT INTO versions (adapter_id, number, status, source_digest, source_size, requested,"
        " peft_config, artifact_digest, artifact_size, codec, leased_by, lease_expires_at)"
        " VALUES (:a, :n, :s, :d, 10, :r, :c, :ad, :az, :codec, :lb, :le)"
    )
    with db.engine.begin() as conn:
        adapters = {}
        for named in (True, False):
            adapters[named] = conn.execute(
                sa.text(
                    "INSERT INTO adapters (namespace, name, task, base_model) VALUES ('acme', :n, 't', :b)"
                    " RETURNING id"
                ),
                {"n": "with" if named else "without", "b": "org/base" if named else None},
            ).scalar_one()
        for number, status, codec, named, config_model in rows:
            digest = f"{number:064x}"
            conn.execute(sa.text(f"INSERT INTO blobs (sha256, size) VALUES ('{digest}', 10)"))
            ready, leased = status == "ready", status == "compressing"
            values = {
                "a": adapters[named],
                "n": number,
                "s": status,
                "d": digest,
                "r": json.dumps({"codec": codec}),
                "c": json.dumps({"base_model_name_or_path": config_model}),
                "ad": digest if ready else None,
                "az": 10 if ready else None,
                "codec": codec if ready else None,
                "lb": "w" if leased else None,
                "le": "2026-01-01 00:00:00" if leased else None,
            }
            conn.execute(insert, values)
    db.upgrade()
    with db.engine.connect() as conn:
        wanted = dict(conn.execute(sa.text("SELECT number, wants_base_model FROM versions")).all())
    assert wanted == {1: "org/base", 2: "org/from-config", 3: None, 4: None}


def test_0004_widens_base_model_and_keeps_what_was_there(fresh_db_url):

    insert = sa.text("INSERT INTO adapters (namespace, name, task, base_model) VALUES ('acme', :n, 't', :b)")
    db = Database(fresh_db_url)
    db.upgrade("0002")
    with db.engine.begin() as conn:
        conn.execute(insert, {"n": "short", "b": "org/model"})
    db.upgrade()
    long_path, wide = "/" + "p" * 2047, "\U0001d538" * 512  # 2,048 bytes each: within the B-tree index
    with db.engine.begin() as conn:
        conn.execute(insert, {"n": "long", "b": long_path})
        conn.execute(insert, {"n": "wide", "b": wide})
    read = sa.text("SELECT name, base_model FROM adapters ORDER BY name")
    with db.engine.connect() as conn:
        assert conn.execute(read).all() == [("long", long_path), ("short", "org/model"), ("wide", wide)]
    downgrade(db.engine, "0003")  # cuts what the old column cannot hold
    with db.engine.connect() as conn:
        assert conn.execute(read).all() == [
            ("long", long_path[:256]),
            ("short", "org/model"),
            ("wide", wide[:256]),
        ]
    db.dispose()


def test_0006_keeps_old_versions_identity_and_downgrade_keeps_one_live_version_per_source(fresh_db_url):

    version = sa.text(
        "INSERT INTO versions (adapter_id, number, status, source_digest, content_digest, source_size, "
        "requested, peft_config) VALUES (:a, :n, 'pending', :d, :c, 10, '{}', '{}')"
    )
    db = Database(fresh_db_url)
    db.upgrade("0005")
    with db.engine.begin() as conn:
        adapter_id = conn.execute(
            sa.text("INSERT INTO adapters (namespace, name, task) VALUES ('acme', 'x', 't') RETURNING id")
        ).scalar_one()
        conn.execute(sa.text(f"INSERT INTO blobs (sha256, size) VALUES ('{DIGEST}', 10)"))
        conn.execute(
            sa.text(
                "INSERT INTO versions (adapter_id, number, status, source_digest, source_size, requested,"
                " peft_config) VALUES (:a, 1, 'pending', :d, 10, '{}', '{}')"
            ),
            {"a": adapter_id, "d": DIGEST},
        )
    db.upgrade()
    read = sa.text("SELECT number, status, content_digest FROM versions ORDER BY number")
    with db.engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(read)] == [(1, "pending", DIGEST)]
        assert conn.execute(sa.text("SELECT count(*) FROM version_files")).scalar_one() == 0
    with db.engine.begin() as conn:  # the same source with another README: a version of its own
        conn.execute(version, {"a": adapter_id, "n": 2, "d": DIGEST, "c": OTHER})
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:  # the same content: refused
        conn.execute(version, {"a": adapter_id, "n": 3, "d": DIGEST, "c": OTHER})
    downgrade(db.engine, "0005")
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT number, status FROM versions ORDER BY number")).all()
    assert [tuple(r) for r in rows] == [(1, "failed"), (2, "pending")]
    assert "version_files" not in sa.inspect(db.engine).get_table_names()
    db.upgrade()
    assert _drift(db.engine) == []
    db.dispose()
