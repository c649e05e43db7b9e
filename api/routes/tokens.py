"""API tokens (admin scope): make one (its secret is in this response only), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from adapters.registry.schemas import TokenCreated, TokenView

from .. import problems
from ..auth import Admin
from ..schemas import TokenList, TokenRequest
from ..state import State

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="A token's public id.")]


@router.get(
    "",
    response_model=TokenList,
    summary="Tokens (of the caller's namespace, for a namespace admin)",
    responses=problems.responses(401, 403, 422, 503),
)
def list_tokens(
    state: State,
    principal: Admin,
    include_revoked: Annotated[bool, Query(description="Also list revoked tokens.")] = False,
) -> TokenList:
    return TokenList(tokens=state.registry.list_tokens(include_revoked=include_revoked, principal=principal))


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    summary="Make a token; its secret is shown in this response only",
    responses=problems.responses(400, 401, 403, 413, 422, 503),
)
def create_token(body: TokenRequest, state: State, principal: Admin) -> TokenCreated:
    return state.registry.create_token(
        body.name, body.scope, namespace=body.namespace, expires_at=body.expires_at, principal=principal
    )


@router.delete(
    "/{token_id}",
    response_model=TokenView,
    summary="Revoke a token (at once, for every API process)",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def revoke_token(token_id: TokenId, state: State, principal: Admin) -> TokenView:
    return state.registry.revoke_token(token_id, principal=principal)
