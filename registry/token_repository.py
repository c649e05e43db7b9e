"""Queries over API tokens (issuing, checking and revoking them is tokens.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import Token


class TokenRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, token: Token) -> Token:
        self.session.add(token)
        self.session.flush()
        return token

    def by_secret_hash(self, digest: str) -> Token | None:
        return self.session.scalar(sa.select(Token).where(Token.secret_sha256 == digest))

    def by_public_id(self, public_id: str) -> Token | None:
        return self.session.scalar(sa.select(Token).where(Token.public_id == public_id))

    def list(self, *, namespace: str | None = None, include_revoked: bool = False) -> Sequence[Token]:
        query = sa.select(Token).order_by(Token.created_at, Token.id)
        if namespace is not None:
            query = query.where(Token.namespace == namespace)
        if not include_revoked:
            query = query.where(Token.revoked_at.is_(None))
        return self.session.scalars(query).all()

    def touch(self, token: Token, now: dt.datetime, *, every: dt.timedelta) -> None:
        """Record use, at most once per `every` (a write per request would serialize on the row)."""
        if token.last_used_at is None or now - token.last_used_at >= every:
            self.session.execute(
                sa.update(Token)
                .where(Token.id == token.id)
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
