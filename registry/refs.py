"""Names and references: the one place that says what a valid name, alias, digest and ref look like.

    ns/name                 the latest version: the newest `ready` one that is not yanked
    ns/name:3               version 3
    ns/name@prod            whatever the alias `prod` points to (`@latest` is the implicit alias)
    ns/name@sha256:<hex>    the version whose source or artifact has this sha256

Namespaces, names, aliases, tasks and tags share one rule: lower-case letters, digits, `.`, `_` and `-`,
starting with a letter or digit, at most 64 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName, InvalidRef

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
DIGEST_PATTERN = r"[0-9a-f]{64}"
# The same rules as regular expressions for database CHECK constraints (PostgreSQL `~`, SQLite REGEXP
# via Python's re.search): \A and \Z anchor at the very ends in both, where `$` would accept a newline.
NAME_REGEX = rf"\A{NAME_PATTERN}\Z"
DIGEST_REGEX = rf"\A{DIGEST_PATTERN}\Z"
LATEST = "latest"
RESERVED_ALIASES = frozenset({LATEST})

_NAME = re.compile(NAME_PATTERN)
_DIGEST = re.compile(DIGEST_PATTERN)
_REF = re.compile(
    r"(?P<namespace>[^/:@]*)/(?P<name>[^/:@]*)"
    r"(?::(?P<number>[^/:@]*)|@sha256:(?P<digest>[^/:@]*)|@(?P<alias>[^/:@]*))?"
)
NAME_RULE = (
    "lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters"
)
REF_FORMS = "ns/name, ns/name:3, ns/name@alias or ns/name@sha256:<64 hex digits>"


def check_name(value: str, what: str = "name") -> str:
    """Return `value` if it follows the naming rule, else raise InvalidName saying which rule."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName(f"invalid {what} {value!r}: use {NAME_RULE}")
    return value


def check_alias(value: str) -> str:
    check_name(value, "alias")
    if value in RESERVED_ALIASES:
        raise InvalidName(f"alias {value!r} is reserved: it always means the newest ready version")
    return value


def check_digest(value: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidRef(f"invalid sha256 digest {value!r}: expected 64 lower-case hex digits")
    return value


@dataclass(frozen=True, order=True)
class AdapterName:
    namespace: str
    name: str

    def __post_init__(self) -> None:
        check_name(self.namespace, "namespace")
        check_name(self.name, "adapter name")

    @classmethod
    def parse(cls, text: str) -> AdapterName:
        """Parse `ns/name`; raises InvalidName."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) != 2:
            raise InvalidName(f"invalid adapter name {text!r}: expected namespace/name, e.g. acme/support-en")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Ref:
    """A parsed reference. At most one of number, alias and digest is set; none means latest."""

    adapter: AdapterName
    number: int | None = None
    alias: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        """Parse any of the four ref forms; raises InvalidRef with the forms it accepts."""
        match = _REF.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidRef(f"invalid ref {text!r}: expected {REF_FORMS}")
        try:
            adapter = AdapterName(match["namespace"], match["name"])
        except InvalidName as exc:
            raise InvalidRef(f"invalid ref {text!r}: {exc}") from None
        number, alias, digest = match["number"], match["alias"], match["digest"]
        if number is not None:
            if not re.fullmatch(r"[1-9][0-9]{0,8}", number):
                raise InvalidRef(f"invalid ref {text!r}: a version number is a positive integer")
            return cls(adapter, number=int(number))
        if digest is not None:
            if not _DIGEST.fullmatch(digest):
                raise InvalidRef(f"invalid ref {text!r}: sha256 digests are 64 lower-case hex digits")
            return cls(adapter, digest=digest)
        if alias is not None:
            if not _NAME.fullmatch(alias):
                raise InvalidRef(f"invalid ref {text!r}: alias names use {NAME_RULE}")
            if alias == LATEST:
                return cls(adapter)
            return cls(adapter, alias=alias)
        return cls(adapter)

    @property
    def is_latest(self) -> bool:
        return self.number is None and self.alias is None and self.digest is None

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.adapter}:{self.number}"
        if self.alias is not None:
            return f"{self.adapter}@{self.alias}"
        if self.digest is not None:
            return f"{self.adapter}@sha256:{self.digest}"
        return str(self.adapter)
