"""Who is calling: the bearer token (or anonymity, where the settings allow reads without one), and
the dependencies routes declare to say what they need.

`requires(scope)` checks the token's scope and, when the path names a namespace, that the token may
act there. Routes whose namespace comes from elsewhere (a ref in the query, a list filter) check it
themselves with `principal.require(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adapters.registry.errors import AuthenticationRequired, InvalidToken
from adapters.registry.models import TokenScope
from adapters.registry.tokens import Principal

from .state import State

bearer = HTTPBearer(auto_error=False, description="An API token made with `adapters token create`.")


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    state: State,
) -> Principal:
    if credentials is not None:
        principal = state.registry.authenticate(credentials.credentials)
    elif request.headers.get("authorization"):
        raise InvalidToken("malformed Authorization header: expected `Bearer <token>`")
    elif state.settings.allow_anonymous_read:
        principal = Principal.anonymous()
    else:
        raise AuthenticationRequired("this registry needs a token: send `Authorization: Bearer <token>`")
    request.state.principal = principal  # for the access log (name and public id only)
    return principal


def requires(scope: TokenScope) -> Callable[..., Principal]:
    def dependency(
        request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        namespace = request.path_params.get("namespace")
        if namespace is None:
            principal.require(scope, principal.namespace)  # scope only; the route checks the namespace
        else:
            principal.require(scope, namespace)
        return principal

    return dependency


Reader = Annotated[Principal, Depends(requires(TokenScope.READ))]
Writer = Annotated[Principal, Depends(requires(TokenScope.WRITE))]
Admin = Annotated[Principal, Depends(requires(TokenScope.ADMIN))]
