"""Re-compression (admin of the namespace): re-encode ready versions from their lossless sources with
the current codec, keeping each version's identity. Where the server compresses inline it runs in the
request; on a queue, each version becomes a `recompress` job for the workers."""

from __future__ import annotations

from fastapi import APIRouter

from adapters.registry.recompress_views import RecompressReport, RecompressRequest
from adapters.registry.refs import AdapterName, Ref

from .. import problems
from ..auth import Admin
from ..params import Name, Namespace, Number
from ..state import State

router = APIRouter(tags=["recompress"])
RESPONSES = problems.responses(400, 401, 403, 404, 409, 422, 503)


def _run(
    state: State, principal: Admin, body: RecompressRequest | None, **target: object
) -> RecompressReport:
    body = body or RecompressRequest()
    return state.registry.recompress(  # type: ignore[no-any-return]
        codec=body.codec, dry_run=body.dry_run, principal=principal, **target
    )


@router.post(
    "/v1/adapters/{namespace}/{name}/versions/{number}/recompress",
    response_model=RecompressReport,
    summary="Re-encode a ready version from its source with the current codec (admin)",
    responses=RESPONSES,
)
def recompress_version(
    namespace: Namespace,
    name: Name,
    number: Number,
    state: State,
    principal: Admin,
    body: RecompressRequest | None = None,
) -> RecompressReport:
    return _run(state, principal, body, ref=Ref(AdapterName(namespace, name), number=number))


@router.post(
    "/v1/adapters/{namespace}/{name}/recompress",
    response_model=RecompressReport,
    summary="Re-encode every ready, unyanked version of an adapter (admin)",
    responses=RESPONSES,
)
def recompress_adapter(
    namespace: Namespace, name: Name, state: State, principal: Admin, body: RecompressRequest | None = None
) -> RecompressReport:
    return _run(state, principal, body, ref=Ref(AdapterName(namespace, name)))


@router.post(
    "/v1/namespaces/{namespace}/recompress",
    response_model=RecompressReport,
    summary="Re-encode every ready, unyanked version in a namespace (admin)",
    responses=RESPONSES,
)
def recompress_namespace(
    namespace: Namespace, state: State, principal: Admin, body: RecompressRequest | None = None
) -> RecompressReport:
    return _run(state, principal, body, namespace=namespace)
