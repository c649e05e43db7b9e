"""Views of lifecycle operations (deletion, retention, alias history and protection, garbage
collection), for the CLI's `--json` and the API's bodies."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from .models import Alias, AliasEvent
from .schemas import View


class Deleted(View):
    """What a deletion or a retention pass removed."""

    adapter: str
    versions: list[int] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    adapter_deleted: bool = False
    keep: int | None = None  # retention: how many versions are kept (the adapter's setting, if saved)


class AliasEventView(View):
    adapter: str
    alias: str
    from_version: int | None  # None: the alias was created
    to_version: int | None  # None: the alias was removed
    actor: str | None
    at: dt.datetime

    @classmethod
    def of(cls, adapter: str, event: AliasEvent) -> AliasEventView:
        return cls(
            adapter=adapter,
            alias=event.alias,
            from_version=event.from_number,
            to_version=event.to_number,
            actor=event.actor,
            at=event.at,
        )


class AliasHistory(View):
    events: list[AliasEventView]


class AliasProtection(View):
    adapter: str
    alias: str
    version: int
    protected: bool

    @classmethod
    def of(cls, alias: Alias) -> AliasProtection:
        return cls(
            adapter=alias.version.adapter.full_name,
            alias=alias.name,
            version=alias.version.number,
            protected=alias.protected,
        )


class LabelsView(View):
    ref: str
    labels: dict[str, str]
