"""API tokens: who may do what, in which namespace.

A token is `adp_<public id>_<secret>`: 12 hex digits that name it (in lists, logs and `token revoke`)
and 256 random bits. Only the sha256 of the whole string is stored, so the database never holds a
usable token; the string is shown once, when it is made. A plain hash suffices because the secret is
random and long: there is nothing to guess or to look up in a table.

Scopes are ordered: `read` (list, show, resolve, pull) < `write` (push, aliases, yank) < `admin`
(tokens). A token with a namespace acts only there; without one, everywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from .db import utcnow
from .errors import AuthenticationRequired, InvalidRequest, InvalidToken, PermissionDenied, TokenNotFound
from .models import Token, TokenScope
from .refs import check_name
from .repository import db_now
from .token_repository import TokenRepository

PREFIX = "adp_"
RANK = {TokenScope.READ: 0, TokenScope.WRITE: 1, TokenScope.ADMIN: 2}
TOUCH_EVERY = dt.timedelta(minutes=5)
MAX_SECRET_LENGTH = 256
ANONYMOUS = "anonymous"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh (public id, token string)."""
    public_id = secrets.token_hex(6)
    return public_id, f"{PREFIX}{public_id}_{secrets.token_urlsafe(32)}"


def as_scope(value: str | TokenScope) -> TokenScope:
    try:
        return TokenScope(value)
    except ValueError:
        raise InvalidRequest(f"unknown scope {value!r}: use read, write or admin") from None


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token's identity, scope and namespace (None: every namespace)."""

    name: str
    scope: TokenScope
    namespace: str | None = None
    token_id: str | None = None

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(name=ANONYMOUS, scope=TokenScope.READ)

    @property
    def is_anonymous(self) -> bool:
        return self.name == ANONYMOUS and self.token_id is None

    @classmethod
    def local(cls, user: str | None) -> Principal:
        """Whoever runs the CLI on the database directly: they hold its credentials, so everything."""
        return cls(name=user or "local", scope=TokenScope.ADMIN)

    def allows(self, scope: str | TokenScope, namespace: str | None = None) -> bool:
        if RANK[self.scope] < RANK[as_scope(scope)]:
            return False
        return self.namespace is None or namespace == self.namespace

    def require(self, scope: str | TokenScope, namespace: str | None = None) -> None:
        """Raise PermissionDenied unless this principal may act with `scope` in `namespace`
        (`None`: across namespaces)."""
        scope = as_scope(scope)
        if RANK[self.scope] < RANK[scope] and self.is_anonymous:
            raise AuthenticationRequired(f"this operation needs a token with scope {scope.value}")
        if RANK[self.scope] < RANK[scope]:
            raise PermissionDenied(
                f"this token has scope {self.scope.value}; the operation needs {scope.value}"
            )
        if self.namespace is not None and namespace != self.namespace:
            where = f"namespace {namespace!r}" if namespace else "every namespace"
            raise PermissionDenied(f"this token is limited to namespace {self.namespace!r}, not {where}")


def create_token(
    session: Session,
    *,
    name: str,
    scope: str | TokenScope,
    namespace: str | None = None,
    expires_at: dt.datetime | None = None,
    by: Principal,
) -> tuple[Token, str]:
    """Make a token; returns the row and the token string (shown once, never stored).
    Only an admin makes tokens, and one limited to a namespace only for that namespace."""
    check_name(name, "token name")
    if namespace is not None:
        check_name(namespace, "namespace")
    scope = as_scope(scope)
    by.require(TokenScope.ADMIN, namespace)
    public_id, secret = new_secret()
    token = TokenRepository(session).add(
        Token(
            public_id=public_id,
            secret_sha256=hash_secret(secret),
            name=name,
            scope=scope.value,
            namespace=namespace,
            created_by=by.name,
            expires_at=expires_at,
        )
    )
    return token, secret


def parse_secret(secret: str) -> str:
    """The public id in a token string; raises InvalidToken for anything not shaped like one."""
    if not (isinstance(secret, str) and secret.startswith(PREFIX) and len(secret) <= MAX_SECRET_LENGTH):
        raise InvalidToken("malformed token: expected adp_<id>_<secret>")
    public_id, sep, _ = secret[len(PREFIX) :].partition("_")
    if not sep or len(public_id) != 12:
        raise InvalidToken("malformed token: expected adp_<id>_<secret>")
    return public_id


def authenticate(session: Session, secret: str) -> Principal:
    """The principal a token string stands for; raises InvalidToken for unknown, revoked or expired
    tokens (without saying which: the caller learns nothing about tokens it does not hold)."""
    parse_secret(secret)
    tokens = TokenRepository(session)
    token = tokens.by_secret_hash(hash_secret(secret))
    now = utcnow()  # this machine's clock: expiry is coarse, and a query saved on every request
    if (
        token is None
        or token.revoked_at is not None
        or (token.expires_at is not None and token.expires_at <= now)
    ):
        raise InvalidToken("invalid token: unknown, revoked or expired")
    tokens.touch(token, now, every=TOUCH_EVERY)
    return Principal(
        name=f"token:{token.name}",
        scope=TokenScope(token.scope),
        namespace=token.namespace,
        token_id=token.public_id,
    )


def list_tokens(session: Session, *, by: Principal, include_revoked: bool = False) -> Sequence[Token]:
    """The tokens an admin may see: all of them, or those of its namespace."""
    by.require(TokenScope.ADMIN, by.namespace)
    return TokenRepository(session).list(namespace=by.namespace, include_revoked=include_revoked)


def revoke_token(session: Session, public_id: str, *, by: Principal) -> Token:
    """Revoke a token at once (idempotent)."""
    token = TokenRepository(session).by_public_id(public_id)
    if token is None or not by.allows(TokenScope.ADMIN, token.namespace):
        by.require(TokenScope.ADMIN, by.namespace)  # a non-admin learns only that it is not one
        raise TokenNotFound(f"no token {public_id!r}")
    if token.revoked_at is None:
        token.revoked_at = db_now(session)
    return token
