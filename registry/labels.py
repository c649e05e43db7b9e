"""Version metadata: free-form key/value labels (training run, dataset, metrics) and the revision of
the base model a version was trained on.

Labels are rows of `version_labels`, one per key, so filters (`ls --label k=v`, `?label=k:v`) read an
index instead of scanning JSON, the same way on PostgreSQL and SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from . import limits
from .errors import InvalidRequest
from .models import Adapter, Version, VersionLabel

KEY = re.compile(limits.LABEL_KEY_REGEX.replace(r"\A", "^").replace(r"\Z", "$"))


def check_key(key: str) -> str:
    if not KEY.fullmatch(key):
        raise InvalidRequest(
            f"invalid label key {key[:80]!r}: use 1-64 lowercase letters, digits, '.', '_', '/' or '-', "
            "starting with a letter or digit"
        )
    return key


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels as a push or `label` gives them: valid keys, short text values, not too many."""
    limits.check_count(list(labels), "labels", limits.MAX_LABELS)
    for key, value in labels.items():
        check_key(key)
        if not isinstance(value, str):
            raise InvalidRequest(f"label {key!r}: the value must be text")
        limits.check_text(value, f"value of label {key!r}", limits.MAX_LABEL_VALUE_LENGTH)
    return dict(labels)


def parse_pairs(pairs: Iterable[str], separator: str = "=") -> dict[str, str]:
    """`k=v` strings (the CLI's form; the API's filter uses `k:v`) as a dict; the first separator
    splits, so values may hold it."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition(separator)
        if not sep:
            raise InvalidRequest(f"invalid label {pair[:80]!r}: expected key{separator}value")
        parsed[check_key(key.strip())] = value
    return parsed


def check_revision(revision: str | None) -> str | None:
    if revision is None:
        return None
    revision = revision.strip()
    if not revision:
        return None
    limits.check_text(revision, "base model revision", limits.MAX_REVISION_LENGTH)
    if any(char.isspace() for char in revision):
        raise InvalidRequest(f"invalid base model revision {revision[:80]!r}: it holds whitespace")
    return revision


def revision_of(config: Mapping[str, object], given: str | None) -> str | None:
    """The base model revision of a push: the one given, else the adapter config's `revision`."""
    if given is not None:
        return check_revision(given)
    found = config.get("revision")
    return check_revision(found) if isinstance(found, str) else None


def update(
    session: Session, version: Version, set_: Mapping[str, str], remove: Sequence[str] = ()
) -> dict[str, str]:
    """Set and remove labels on a version; returns its labels after. Removing an absent key is a
    no-op (the call is idempotent); the result may not exceed the limit on labels."""
    check_labels(set_)
    for key in remove:
        check_key(key)
    current = {row.key: row for row in version.label_rows}
    for key in remove:
        row = current.pop(key, None)
        if row is not None:
            version.label_rows.remove(row)
    for key, value in set_.items():
        if key in current:
            current[key].value = value
        else:
            row = VersionLabel(key=key, value=value)
            version.label_rows.append(row)
            current[key] = row
    limits.check_count(list(current), "labels", limits.MAX_LABELS)
    session.flush()
    return version.labels


def adapters_with(labels: Mapping[str, str]) -> sa.Exists:
    """A condition on `adapters`: some version of the adapter carries every one of these labels."""
    version = aliased(Version)
    carries = [
        sa.exists().where(
            VersionLabel.version_id == version.id, VersionLabel.key == key, VersionLabel.value == value
        )
        for key, value in labels.items()
    ]
    return sa.exists().where(version.adapter_id == Adapter.id, *carries)
