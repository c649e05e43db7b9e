"""Aliases: movable names (prod, canary, ...) for versions of one adapter."""

from __future__ import annotations

from fastapi import APIRouter

from adapters.registry.errors import InvalidRequest
from adapters.registry.models import TokenScope
from adapters.registry.refs import AdapterName, Ref
from adapters.registry.schemas import AliasResult

from .. import problems
from ..auth import Reader, Writer
from ..params import AliasName, Name, Namespace
from ..schemas import AliasTarget
from ..state import State

router = APIRouter(prefix="/v1/adapters/{namespace}/{name}/aliases", tags=["aliases"])


@router.get(
    "",
    response_model=dict[str, int],
    summary="An adapter's aliases and the version numbers they point to",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def list_aliases(namespace: Namespace, name: Name, state: State, principal: Reader) -> dict[str, int]:
    return state.registry.adapter(AdapterName(namespace, name)).aliases


@router.put(
    "/{alias}",
    response_model=AliasResult,
    summary="Create or move an alias (to a ready, not yanked version)",
    responses=problems.responses(400, 401, 403, 404, 409, 413, 422, 503),
)
def set_alias(
    namespace: Namespace, name: Name, alias: AliasName, target: AliasTarget, state: State, principal: Writer
) -> AliasResult:
    adapter = AdapterName(namespace, name)
    if (target.version is None) == (target.ref is None):
        raise InvalidRequest("give exactly one of version and ref")
    ref = Ref(adapter, number=target.version) if target.version is not None else Ref.parse(str(target.ref))
    if ref.adapter != adapter:
        raise InvalidRequest(f"{ref} is not a version of {adapter}")
    admin = principal.allows(TokenScope.ADMIN, namespace)  # protected aliases move only for admins
    return state.registry.set_alias(ref, alias, by=principal.name, admin=admin)


@router.delete(
    "/{alias}",
    response_model=AliasResult,
    summary="Remove an alias",
    responses=problems.responses(400, 401, 403, 404, 422, 503),
)
def remove_alias(
    namespace: Namespace, name: Name, alias: AliasName, state: State, principal: Writer
) -> AliasResult:
    admin = principal.allows(TokenScope.ADMIN, namespace)
    return state.registry.remove_alias(AdapterName(namespace, name), alias, by=principal.name, admin=admin)
