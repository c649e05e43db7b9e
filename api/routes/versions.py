"""Versions: list, detail (status, sizes, fidelity), upload of a new one, yank and un-yank."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from adapters.registry.models import TokenScope
from adapters.registry.refs import AdapterName, Ref
from adapters.registry.schemas import PushResult, VersionView
from adapters.registry.sweep import temp_prefix

from .. import problems, uploads
from ..auth import Reader, Writer
from ..params import Limit, Name, Namespace, Number
from ..schemas import PushMetadata, VersionPage, YankRequest
from ..state import State

router = APIRouter(prefix="/v1/adapters/{namespace}/{name}/versions", tags=["versions"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "Parts in this order: `metadata` (JSON, see PushMetadata), `config` "
        "(adapter_config.json), `weights` (adapter_model.safetensors, or a file named adapter_model.bin), "
        "then any number of `file` parts named by their filename (README.md, tokenizer files, "
        "new_embeddings.safetensors), each announced in the metadata's `files`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata", "config", "weights"],
                    "properties": {
                        "metadata": {"$ref": "#/components/schemas/PushMetadata"},
                        "config": {"type": "string", "format": "binary"},
                        "weights": {"type": "string", "format": "binary"},
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                },
                "encoding": {"metadata": {"contentType": "application/json"}},
            }
        },
    }
}


@router.get(
    "",
    response_model=VersionPage,
    summary="An adapter's versions with their status, sizes and fidelity",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def list_versions(
    namespace: Namespace,
    name: Name,
    state: State,
    principal: Reader,
    limit: Limit = 100,
    after: Annotated[int | None, Query(ge=0, le=999_999_999, description="Start after this number.")] = None,
) -> VersionPage:
    found = state.registry.versions(AdapterName(namespace, name), after=after, limit=limit + 1)
    page = found[:limit]
    return VersionPage(versions=page, next=page[-1].number if len(found) > limit else None)


@router.get(
    "/{number}",
    response_model=VersionView,
    summary="One version: status, codec, sizes, fidelity, aliases",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def get_version(
    namespace: Namespace, name: Name, number: Number, state: State, principal: Reader
) -> VersionView:
    return state.registry.resolve(Ref(AdapterName(namespace, name), number=number))


@router.post(
    "",
    status_code=201,
    response_model=PushResult,
    summary="Upload a PEFT adapter as the next version",
    responses={
        201: {"description": "A new version"},
        200: {"description": "The adapter already holds this content: that version", "model": PushResult},
        **problems.responses(400, 401, 403, 409, 413, 422, 503),
    },
    openapi_extra=UPLOAD_BODY,
)
async def push_version(
    request: Request, namespace: Namespace, name: Name, state: State, principal: Writer
) -> JSONResponse:
    """Stream a PEFT adapter in (see the request body), validate it and store it as the next version,
    `pending` until a worker compresses it (or already settled where compression runs inline).
    Pushing content the adapter already holds answers 200 with that version. Refused uploads store
    nothing."""
    temp = state.registry.temp_dir()
    with tempfile.TemporaryDirectory(prefix=temp_prefix("upload"), dir=temp) as tmp:
        upload = await uploads.receive(request, Path(tmp), limit=state.settings.max_upload_bytes)
        meta: PushMetadata = upload.metadata
        adapter = AdapterName(namespace, name)
        await run_in_threadpool(
            lambda: state.registry.check_push_aliases(
                adapter, meta.aliases, admin=principal.allows(TokenScope.ADMIN, namespace)
            )
        )
        result = await run_in_threadpool(
            lambda: state.registry.push(
                upload.folder,
                AdapterName(namespace, name),
                task=meta.task,
                base_model=meta.base_model,
                description=meta.description,
                tags=meta.tags,
                aliases=meta.aliases,
                codec=meta.codec,
                params=meta.params,
                on_gate_fail=meta.on_gate_fail,
                created_by=principal.name,
                label=meta.source or "upload",
                labels=meta.labels,
                base_model_revision=meta.base_model_revision,
            )
        )
    location = f"/v1/adapters/{namespace}/{name}/versions/{result.version.number}"
    return JSONResponse(
        result.to_json(), status_code=201 if result.created else 200, headers={"Location": location}
    )


@router.post(
    "/{number}/yank",
    response_model=VersionView,
    summary="Yank a ready version: `ns/name` stops resolving to it, `ns/name:N` still does",
    # 400 invalid-body: a body that is not JSON (e.g. not UTF-8); 413: one over the bound.
    responses=problems.responses(400, 401, 403, 404, 409, 413, 422, 503),
)
def yank(
    namespace: Namespace,
    name: Name,
    number: Number,
    state: State,
    principal: Writer,
    body: Annotated[YankRequest | None, Body()] = None,
) -> VersionView:
    reason = body.reason if body is not None else None
    return state.registry.yank(Ref(AdapterName(namespace, name), number=number), reason)


@router.delete(
    "/{number}/yank",
    response_model=VersionView,
    summary="Un-yank a version",
    responses=problems.responses(401, 403, 404, 422, 503),
)
def unyank(namespace: Namespace, name: Name, number: Number, state: State, principal: Writer) -> VersionView:
    return state.registry.unyank(Ref(AdapterName(namespace, name), number=number))
