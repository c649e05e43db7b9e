"""What can go wrong in the registry, in the registry's words.

These errors know nothing of HTTP or terminals. Each has a stable machine `code` (the API renders it as
the problem `type`, the CLI as a one-line message) and a readable message that names the thing involved.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    """Base class: an expected failure that the caller can report to a user as is."""

    code: ClassVar[str] = "registry-error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class NotFound(RegistryError):
    code = "not-found"


class AdapterNotFound(NotFound):
    code = "adapter-not-found"


class VersionNotFound(NotFound):
    code = "version-not-found"


class AliasNotFound(NotFound):
    code = "alias-not-found"


class FileNotFound(NotFound):
    """A version has no file of that name (it holds adapter_config.json, adapter_model.safetensors and
    the other files it was pushed with)."""

    code = "file-not-found"


class NotCached(NotFound):
    """An offline pull of a ref that no earlier online pull brought into the download cache."""

    code = "not-cached"


class BlobNotFound(NotFound):
    code = "blob-not-found"


class InvalidName(RegistryError):
    """A namespace, adapter name, alias, task or tag that breaks the naming rule."""

    code = "invalid-name"


class InvalidRef(RegistryError):
    """A reference to a version that cannot be parsed."""

    code = "invalid-ref"


class InvalidAdapterUpload(RegistryError):
    """The PEFT directory (or upload) is not a valid LoRA adapter; the message says why."""

    code = "invalid-adapter"


class AdapterTooLarge(RegistryError):
    code = "adapter-too-large"


class InvalidCodec(RegistryError):
    """An unknown codec, or parameters the codec refuses."""

    code = "invalid-codec"


class AdapterConflict(RegistryError):
    """A push whose metadata contradicts the adapter it targets (another task or base model)."""

    code = "adapter-conflict"


class VersionNotReady(RegistryError):
    """The version exists but cannot serve the request in its current status (pending, failed, ...)."""

    code = "version-not-ready"


class BlobCorrupted(RegistryError):
    """A blob whose bytes do not hash to its address. Its content is never returned."""

    code = "blob-corrupted"


class StorageError(RegistryError):
    """The blob store failed (unreachable, access denied, ...)."""

    code = "storage-error"


class SchemaOutdated(RegistryError):
    code = "schema-outdated"


class ConfigurationError(RegistryError):
    code = "invalid-configuration"


class OutputError(RegistryError):
    """The destination of a pull cannot be written."""

    code = "output-error"


class OutputExists(OutputError):
    code = "output-exists"


class UnsupportedArtifact(RegistryError):
    """A verified artifact that this build cannot decode (e.g. a codec or format version it lacks)."""

    code = "unsupported-artifact"


class InvalidRequest(RegistryError):
    """A request that is well-formed but incomplete or contradictory (e.g. a new adapter without a task)."""

    code = "invalid-request"


class TokenNotFound(NotFound):
    code = "token-not-found"


class AuthenticationRequired(RegistryError):
    """The operation needs a token and none was given."""

    code = "unauthenticated"


class InvalidToken(RegistryError):
    """A token that is unknown, revoked or expired."""

    code = "invalid-token"


class PermissionDenied(RegistryError):
    """The token's scope or namespace does not cover the operation."""

    code = "forbidden"


class AliasProtected(PermissionDenied):
    """A protected alias, which only an admin may move or remove."""

    code = "alias-protected"


class VersionAliased(RegistryError):
    """A version an alias points to, which is not deleted unless forced (the aliases go with it)."""

    code = "version-aliased"


class DigestMismatch(RegistryError):
    """Uploaded bytes whose sha256 is not the one the client announced: nothing is stored."""

    code = "digest-mismatch"


class WaitTimeout(RegistryError):
    """A version did not settle (ready, rejected or failed) within the time given."""

    code = "timeout"


class ServiceUnavailable(RegistryError):
    """The registry API, its database or its blob store cannot be reached."""

    code = "service-unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached, or dropped the connection (a restart, an outage)."""


class RemoteError(RegistryError):
    """The registry API answered with an error this client does not know."""

    code = "remote-error"


def _subclasses(cls: type[RegistryError]) -> list[type[RegistryError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def error_classes() -> dict[str, type[RegistryError]]:
    """Every domain error by its code (what the API's problem types are made from). A subclass that
    keeps its parent's code (DatabaseUnavailable) is not listed: the code names the parent."""
    found: dict[str, type[RegistryError]] = {}
    for cls in _subclasses(RegistryError):
        found.setdefault(cls.code, cls)
    return found


class WebhookNotFound(NotFound):
    """No webhook with that id (or not in a namespace the caller administers)."""

    code = "webhook-not-found"


class SourceMissing(RegistryError):
    """A version whose lossless source blob is not in the store: it cannot be re-encoded."""

    code = "source-missing"
