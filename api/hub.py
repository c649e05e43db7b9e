"""What the Hugging Face Hub-compatible routes share: how a Hub revision names a version, the commit
id a version gets, the files a version holds as the Hub lists them, and errors that
`huggingface_hub` turns into its own exceptions.

A revision is a version number (`3`), an alias (`prod`), `main` (the latest ready version), the
content digest (`sha256:<hex>` or the bare 64 hex digits), or the commit id. A version's commit id
is the first 40 hex digits of its content digest (its source's, or over the source and its other
files): stable, and unique within an adapter,
since an adapter holds each content once. Clients that resolve a revision once and then fetch by
commit id (as `snapshot_download` does) so get the same version even if an alias moves meanwhile.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from adapters.registry import errors
from adapters.registry.client import LocalRegistry
from adapters.registry.refs import NAME_PATTERN, AdapterName, Ref
from adapters.registry.schemas import VersionView

from . import problems

MAIN = "main"
COMMIT = re.compile(r"[0-9a-f]{40}")
_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_ALIAS = re.compile(NAME_PATTERN)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"

# `X-Error-Code` values huggingface_hub maps to RepositoryNotFoundError, RevisionNotFoundError and
# (Remote)EntryNotFoundError: a HEAD answer has no body, so the code must travel in a header.
HUB_ERROR_CODES: dict[type[errors.RegistryError], str] = {
    errors.AdapterNotFound: "RepoNotFound",
    # A token for another namespace (403): the client says "not found or no access", as the Hub does.
    errors.PermissionDenied: "RepoNotFound",
    errors.VersionNotFound: "RevisionNotFound",
    errors.AliasNotFound: "RevisionNotFound",
    errors.FileNotFound: "EntryNotFound",
}
# The message huggingface_hub reads as "the token is wrong" rather than "no such repository".
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def commit_id(version: VersionView) -> str:
    return version.content_digest[:40]


def revision_ref(registry: LocalRegistry, adapter: AdapterName, revision: str) -> Ref:
    """The ref a Hub revision names (see the module's docstring); VersionNotFound when it names none."""
    if revision == MAIN:
        return Ref(adapter)
    if _NUMBER.fullmatch(revision):
        return Ref(adapter, number=int(revision))
    if digest := _DIGEST.fullmatch(revision):
        return Ref(adapter, digest=digest[1])
    if COMMIT.fullmatch(revision):
        for version in registry.versions(adapter):
            if commit_id(version) == revision:
                return Ref(adapter, number=version.number)
    if _ALIAS.fullmatch(revision):
        return Ref.parse(f"{adapter}@{revision}")
    registry.adapter(adapter)  # an unknown adapter is RepoNotFound, not RevisionNotFound
    raise errors.VersionNotFound(
        f"{adapter} has no revision {revision!r}: use a version number, an alias, main, "
        "sha256:<digest> or a commit id"
    )


def is_pinned(revision: str) -> bool:
    """Whether the revision always names the same bytes (a number, digest or commit, not an alias)."""
    return bool(_NUMBER.fullmatch(revision) or _DIGEST.fullmatch(revision) or COMMIT.fullmatch(revision))


def lfs_entry(sha256: str, size: int) -> dict[str, Any]:
    """A file as the Hub lists an LFS file: its git blob id (of the pointer) and its LFS object."""
    pointer = LFS_POINTER.format(sha256=sha256, size=size).encode()
    blob = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer, usedforsecurity=False).hexdigest()
    return {"oid": blob, "size": size, "lfs": {"oid": sha256, "size": size, "pointerSize": len(pointer)}}


def _ascii(text: str) -> str:
    """A header value: printable ASCII on one line."""
    return re.sub(r"[^\x20-\x7e]", "?", text)[:500]


class HubRoute(APIRoute):
    """A route whose domain errors carry `X-Error-Code` and `X-Error-Message` as the Hub sends them,
    besides the problem+json body every route answers with."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except errors.RegistryError as exc:
                response = problems.registry_error(request, exc)
                code = next((c for cls, c in HUB_ERROR_CODES.items() if isinstance(exc, cls)), None)
                if code is not None:
                    response.headers["X-Error-Code"] = code
                message = INVALID_CREDENTIALS if isinstance(exc, errors.InvalidToken) else str(exc)
                response.headers["X-Error-Message"] = _ascii(message)
                return response

        return route
