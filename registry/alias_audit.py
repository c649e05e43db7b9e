"""Alias history and protection.

Every change of an alias (created, moved, removed) appends a row to `alias_events` in the transaction
that made it, naming who did it: `adapters alias history` reads them back. A protected alias (say
`prod`) is moved or removed only by an admin; everyone else gets AliasProtected (403 over the API).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import events
from .errors import AliasNotFound, AliasProtected
from .models import Adapter, Alias, AliasEvent
from .refs import check_alias
from .version_repository import AliasRepository


def record(
    session: Session,
    adapter: Adapter,
    alias: str,
    *,
    from_number: int | None,
    to_number: int | None,
    actor: str | None,
) -> None:
    """Append one change of `alias` to its history (a no-op when it did not change)."""
    if from_number == to_number:
        return
    session.add(
        AliasEvent(
            adapter_id=adapter.id, alias=alias, from_number=from_number, to_number=to_number, actor=actor
        )
    )
    events.alias_changed(session, adapter, alias, from_number=from_number, to_number=to_number, actor=actor)
    session.flush()


def check_may_change(alias: Alias | None, *, admin: bool) -> None:
    """Raise AliasProtected when `alias` is protected and the caller is not an admin."""
    if alias is not None and alias.protected and not admin:
        raise AliasProtected(
            f"alias {alias.name!r} of {alias.version.adapter.full_name} is protected: only an admin "
            "may move or remove it"
        )


def history(session: Session, adapter: Adapter, alias: str | None = None) -> Sequence[AliasEvent]:
    """The adapter's alias changes (of one alias, if given), oldest first."""
    query = sa.select(AliasEvent).where(AliasEvent.adapter_id == adapter.id).order_by(AliasEvent.id)
    if alias is not None:
        check_alias(alias)
        query = query.where(AliasEvent.alias == alias)
    return session.scalars(query).all()


def set_protected(session: Session, adapter: Adapter, alias: str, protected: bool) -> Alias:
    """Protect an alias (only admins move it afterwards) or lift that; the caller checks that an admin
    asks."""
    check_alias(alias)
    found = AliasRepository(session).get(adapter, alias)
    if found is None:
        raise AliasNotFound(f"{adapter.full_name} has no alias {alias!r}")
    found.protected = protected
    session.flush()
    return found
