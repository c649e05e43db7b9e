"""Adapters: lookup by task, base model, tag and namespace (paged), one adapter, and ref resolution."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from adapters.registry import labels, limits
from adapters.registry.engines import CompatFilter
from adapters.registry.models import TokenScope
from adapters.registry.refs import AdapterName, Ref
from adapters.registry.schemas import AdapterView, VersionView

from .. import problems
from ..auth import Reader
from ..params import Limit, Name, Namespace
from ..schemas import NAME, AdapterPage
from ..state import State

router = APIRouter(prefix="/v1", tags=["adapters"])


@router.get(
    "/adapters",
    response_model=AdapterPage,
    summary="List adapters, filtered by task, base model, tag, namespace or compatibility",
    responses=problems.responses(400, 401, 403, 422, 503),
)
def list_adapters(
    state: State,
    principal: Reader,
    task: Annotated[str | None, Query(pattern=NAME, max_length=64, description="Only this task.")] = None,
    base_model: Annotated[
        str | None,
        Query(min_length=1, max_length=limits.MAX_BASE_MODEL_BYTES, description="Only this base model."),
    ] = None,
    tag: Annotated[str | None, Query(pattern=NAME, max_length=64, description="Only with this tag.")] = None,
    namespace: Annotated[str | None, Query(pattern=NAME, max_length=64, description="Only here.")] = None,
    max_rank: Annotated[
        int | None, Query(ge=1, le=1_000_000, description="Only latest versions of at most this rank.")
    ] = None,
    no_dora: Annotated[bool, Query(description="Only latest versions without DoRA.")] = False,
    no_modules_to_save: Annotated[
        bool, Query(description="Only latest versions without modules_to_save.")
    ] = False,
    engine: Annotated[
        Literal["vllm", "sglang", "lorax"] | None,
        Query(description="Only latest versions this engine loads (max_rank: its rank limit)."),
    ] = None,
    label: Annotated[
        list[str] | None,
        Query(
            max_length=limits.MAX_LABELS,
            description="Only adapters with a version that carries this label, as key:value (repeatable).",
        ),
    ] = None,
    limit: Limit = 50,
    after: Annotated[
        str | None, Query(max_length=129, description="Start after this adapter (ns/name): `next` of a page.")
    ] = None,
) -> Response:
    """Adapters in name order, one page at a time. A token limited to a namespace sees only that one."""
    if principal.namespace is not None:
        principal.require(TokenScope.READ, namespace or principal.namespace)
        namespace = principal.namespace
    found = state.registry.list(
        namespace=namespace,
        task=task,
        base_model=base_model,
        tag=tag,
        after=AdapterName.parse(after) if after else None,
        limit=limit + 1,
        compat=CompatFilter(
            max_rank=max_rank, no_dora=no_dora, no_modules_to_save=no_modules_to_save, engine=engine
        ),
        labels=labels.parse_pairs(label or [], ":"),
    )
    page = found[:limit]
    body = AdapterPage(adapters=page, next=page[-1].name if len(found) > limit else None)
    return Response(body.model_dump_json(), media_type="application/json")  # built from views already


@router.get(
    "/adapters/{namespace}/{name}",
    response_model=AdapterView,
    summary="One adapter: task, base model, tags, aliases, latest version",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def get_adapter(namespace: Namespace, name: Name, state: State, principal: Reader) -> AdapterView:
    return state.registry.adapter(AdapterName(namespace, name))


@router.get(
    "/resolve",
    response_model=VersionView,
    summary="The version a ref names (ns/name, ns/name:N, ns/name@alias, ns/name@sha256:...)",
    responses=problems.responses(400, 401, 403, 404, 422, 503),
)
def resolve(
    state: State,
    principal: Reader,
    ref: Annotated[str, Query(max_length=256, description="A ref, e.g. acme/support-en@prod.")],
) -> VersionView:
    parsed = Ref.parse(ref)
    principal.require(TokenScope.READ, parsed.adapter.namespace)
    return state.registry.resolve(parsed)
