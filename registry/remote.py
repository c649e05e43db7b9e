"""The registry over its HTTP API: `RemoteRegistry` has the methods of `LocalRegistry` and returns the
same views, so every CLI command works against either with the same output.

Errors come back as problem details whose `code` names a domain error; they are raised again here as
that error, with the server's message. Whatever can be checked without the server (names, refs, the
files of a directory, the output folder) is checked first, with the embedded registry's messages.
Downloads are checked against the sha256 the server sends before anything is written. A download
keeps what it received in a `.part` file and continues from there with a `Range` request after a
cut, and goes through the client's download cache (registry/client_cache.py) when there is one.

The class is assembled here from its parts: the HTTP session with its retries and error mapping
(remote_session.py) and the method groups by concern, remote_read.py (resolve, pull, list, show),
remote_write.py (push, wait, aliases, yank), remote_admin.py (tokens, workers, jobs),
remote_lifecycle.py, remote_webhooks.py and remote_recompress.py.
"""

from __future__ import annotations

from .client_cache import ClientCache
from .remote_admin import RemoteAdminMethods
from .remote_lifecycle import RemoteLifecycleMethods
from .remote_read import RemoteReadMethods
from .remote_recompress import RemoteRecompressMethods
from .remote_webhooks import RemoteWebhookMethods
from .remote_write import RemoteWriteMethods
from .settings import Settings


class RemoteRegistry(
    RemoteReadMethods,
    RemoteWriteMethods,
    RemoteAdminMethods,
    RemoteLifecycleMethods,
    RemoteWebhookMethods,
    RemoteRecompressMethods,
):
    """The HTTP session, retries and error mapping are remote_session.py's; the methods come in groups
    by concern, as in `LocalRegistry`. The session comes before the lifecycle, webhook and recompress
    mixins in the method order, so its `_json` is the one they call."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteRegistry:
        token = settings.token.get_secret_value() if settings.token is not None else None
        return cls(
            settings.url,
            token,
            retries=settings.client_retries,
            backoff=settings.client_backoff_seconds,
            sweep_after=settings.sweep_after_seconds,
            cache=ClientCache(settings.client_cache_dir, settings.client_cache_max_bytes)
            if settings.client_cache_max_bytes > 0 and settings.client_cache_dir is not None
            else None,
        )
