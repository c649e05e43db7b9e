"""Lifecycle and lineage: delete versions and adapters (admin), retention, alias history and
protection, version labels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from adapters.registry.lifecycle_schemas import AliasHistory, AliasProtection, Deleted, LabelsView
from adapters.registry.refs import AdapterName, Ref

from .. import problems
from ..auth import Admin, Reader, Writer
from ..params import AliasName, Name, Namespace, Number
from ..schemas import NAME, LabelsUpdate, RetentionRequest
from ..state import State

router = APIRouter(prefix="/v1/adapters/{namespace}/{name}", tags=["lifecycle"])
Force = Annotated[bool, Query(description="Delete even what an alias points to (the alias goes too).")]


@router.delete(
    "",
    response_model=Deleted,
    summary="Delete an adapter with all its versions (admin); blobs go at the next garbage collection",
    responses=problems.responses(401, 403, 404, 409, 422, 503),
)
def delete_adapter(
    namespace: Namespace, name: Name, state: State, principal: Admin, force: Force = False
) -> Deleted:
    return state.registry.delete(Ref(AdapterName(namespace, name)), force=force, actor=principal.name)


@router.delete(
    "/versions/{number}",
    response_model=Deleted,
    summary="Delete a version (admin); one an alias points to only with force",
    responses=problems.responses(401, 403, 404, 409, 422, 503),
)
def delete_version(
    namespace: Namespace, name: Name, number: Number, state: State, principal: Admin, force: Force = False
) -> Deleted:
    ref = Ref(AdapterName(namespace, name), number=number)
    return state.registry.delete(ref, force=force, actor=principal.name)


@router.post(
    "/retention",
    response_model=Deleted,
    summary="Keep the newest N versions (never an aliased one); `save` applies it after each push",
    responses=problems.responses(400, 401, 403, 404, 422, 503),
)
def retain(
    namespace: Namespace, name: Name, body: RetentionRequest, state: State, principal: Admin
) -> Deleted:
    return state.registry.retain(AdapterName(namespace, name), body.keep, save=body.save)


@router.delete(
    "/retention",
    response_model=Deleted,
    summary="Stop applying retention after pushes",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def clear_retention(namespace: Namespace, name: Name, state: State, principal: Admin) -> Deleted:
    return state.registry.clear_retention(AdapterName(namespace, name))


@router.get(
    "/alias-history",
    response_model=AliasHistory,
    summary="Who moved which alias from which version to which, and when (oldest first)",
    responses=problems.responses(400, 401, 403, 404, 422, 503),
)
def alias_history(
    namespace: Namespace,
    name: Name,
    state: State,
    principal: Reader,
    alias: Annotated[str | None, Query(pattern=NAME, max_length=64, description="Only this alias.")] = None,
) -> AliasHistory:
    return state.registry.alias_history(AdapterName(namespace, name), alias)


@router.put(
    "/aliases/{alias}/protection",
    response_model=AliasProtection,
    summary="Protect an alias: only admins move or remove it afterwards (admin)",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def protect(
    namespace: Namespace, name: Name, alias: AliasName, state: State, principal: Admin
) -> AliasProtection:
    return state.registry.protect_alias(AdapterName(namespace, name), alias, True)


@router.delete(
    "/aliases/{alias}/protection",
    response_model=AliasProtection,
    summary="Lift an alias's protection (admin)",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def unprotect(
    namespace: Namespace, name: Name, alias: AliasName, state: State, principal: Admin
) -> AliasProtection:
    return state.registry.protect_alias(AdapterName(namespace, name), alias, False)


@router.patch(
    "/versions/{number}/labels",
    response_model=LabelsView,
    summary="Set and remove a version's labels; answers its labels after",
    responses=problems.responses(400, 401, 403, 404, 413, 422, 503),
)
def update_labels(
    namespace: Namespace,
    name: Name,
    number: Number,
    state: State,
    principal: Writer,
    body: Annotated[LabelsUpdate, Body()],
) -> LabelsView:
    ref = Ref(AdapterName(namespace, name), number=number)
    return state.registry.label(ref, body.set, body.remove)
