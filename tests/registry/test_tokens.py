"""API tokens: made once, stored as hashes, checked for scope, namespace, expiry and revocation."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from adapters.registry import models, tokens
from adapters.registry.errors import (
    AuthenticationRequired,
    InvalidName,
    InvalidRequest,
    InvalidToken,
    PermissionDenied,
    TokenNotFound,
)
from adapters.registry.models import TokenScope
from adapters.registry.tokens import Principal

ADMIN = Principal.local("ana")


def test_a_token_is_stored_only_as_its_hash(session):
    token, secret = tokens.create_token(session, name="ci", scope="write", namespace="acme", by=ADMIN)
    assert secret.startswith(f"adp_{token.public_id}_") and len(secret) > 50
    row = session.execute(sa.select(models.Token.__table__)).one()
    assert secret not in {str(v) for v in row}
    assert row.secret_sha256 == tokens.hash_secret(secret)
    principal = tokens.authenticate(session, secret)
    assert principal == Principal("token:ci", TokenScope.WRITE, "acme", token.public_id)
    assert token.created_by == "ana"


@pytest.mark.parametrize("secret", ["", "nope", "adp_", "adp_short_x", "adp_0123456789ab", "x" * 10_000])
def test_malformed_and_unknown_tokens_are_refused(session, secret):
    with pytest.raises(InvalidToken):
        tokens.authenticate(session, secret)


def test_unknown_revoked_and_expired_tokens_are_refused_alike(session):
    _, secret = tokens.create_token(session, name="ci", scope="read", by=ADMIN)
    public_id = tokens.parse_secret(secret)
    with pytest.raises(InvalidToken, match="unknown, revoked or expired"):
        tokens.authenticate(session, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    tokens.revoke_token(session, public_id, by=ADMIN)
    with pytest.raises(InvalidToken, match="unknown, revoked or expired"):
        tokens.authenticate(session, secret)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    _, old = tokens.create_token(session, name="old", scope="read", expires_at=past, by=ADMIN)
    with pytest.raises(InvalidToken):
        tokens.authenticate(session, old)


def test_use_is_recorded(session):
    token, secret = tokens.create_token(session, name="ci", scope="read", by=ADMIN)
    assert token.last_used_at is None
    tokens.authenticate(session, secret)
    session.refresh(token)
    assert token.last_used_at is not None


@pytest.mark.parametrize(
    ("principal", "scope", "namespace", "allowed"),
    [
        (Principal("t", TokenScope.READ), "read", "acme", True),
        (Principal("t", TokenScope.READ), "write", "acme", False),
        (Principal("t", TokenScope.WRITE), "write", "acme", True),
        (Principal("t", TokenScope.WRITE), "admin", None, False),
        (Principal("t", TokenScope.ADMIN), "write", "acme", True),
        (Principal("t", TokenScope.WRITE, "acme"), "write", "acme", True),
        (Principal("t", TokenScope.WRITE, "acme"), "read", "other", False),
        (Principal("t", TokenScope.ADMIN, "acme"), "read", None, False),  # across namespaces
        (Principal.anonymous(), "read", "acme", True),
        (Principal.anonymous(), "write", "acme", False),
    ],
)
def test_scopes_and_namespaces(principal, scope, namespace, allowed):
    assert principal.allows(scope, namespace) is allowed
    if allowed:
        principal.require(scope, namespace)
    else:
        # Without a token, the answer is: authenticate.
        with pytest.raises(AuthenticationRequired if principal.is_anonymous else PermissionDenied):
            principal.require(scope, namespace)


def test_only_admins_make_tokens_and_only_within_their_namespace(session):
    writer = Principal("w", TokenScope.WRITE)
    with pytest.raises(PermissionDenied, match="needs admin"):
        tokens.create_token(session, name="x", scope="read", by=writer)
    acme_admin = Principal("a", TokenScope.ADMIN, "acme")
    tokens.create_token(session, name="x", scope="admin", namespace="acme", by=acme_admin)
    with pytest.raises(PermissionDenied, match="limited to namespace 'acme'"):
        tokens.create_token(session, name="y", scope="read", by=acme_admin)
    with pytest.raises(PermissionDenied):
        tokens.create_token(session, name="y", scope="read", namespace="other", by=acme_admin)


def test_admins_see_and_revoke_the_tokens_of_their_namespace(session):
    mine, _ = tokens.create_token(session, name="mine", scope="read", namespace="acme", by=ADMIN)
    theirs, _ = tokens.create_token(session, name="theirs", scope="read", namespace="other", by=ADMIN)
    acme_admin = Principal("a", TokenScope.ADMIN, "acme")
    assert [t.name for t in tokens.list_tokens(session, by=acme_admin)] == ["mine"]
    assert {t.name for t in tokens.list_tokens(session, by=ADMIN)} == {"mine", "theirs"}
    with pytest.raises(TokenNotFound):
        tokens.revoke_token(session, theirs.public_id, by=acme_admin)
    assert tokens.revoke_token(session, mine.public_id, by=acme_admin).revoked_at is not None
    assert tokens.list_tokens(session, by=acme_admin) == []
    assert [t.name for t in tokens.list_tokens(session, by=acme_admin, include_revoked=True)] == ["mine"]
    with pytest.raises(PermissionDenied):
        tokens.revoke_token(session, mine.public_id, by=Principal("w", TokenScope.WRITE))


def test_bad_token_fields_are_refused(session):
    with pytest.raises(InvalidName):
        tokens.create_token(session, name="Bad Name", scope="read", by=ADMIN)
    with pytest.raises(InvalidRequest, match="unknown scope"):
        tokens.create_token(session, name="x", scope="root", by=ADMIN)
    with pytest.raises(InvalidName):
        tokens.create_token(session, name="x", scope="read", namespace="Acme", by=ADMIN)
