"""The read side of the Hugging Face Hub's HTTP API, so `huggingface_hub` (`hf_hub_download`,
`snapshot_download`, `HfApi.model_info`, `list_repo_files`) and everything built on it (PEFT,
vLLM, LoRAX, SGLang, through `HF_ENDPOINT`) read the registry as a Hub: an adapter `ns/name` is a
model repository whose revisions are its versions (see api/hub.py) and whose files are the PEFT
files `adapters pull` writes.

    GET      /api/models/{ns}/{name}[/revision/{revision}]    model info, with the files (siblings)
    GET      /api/models/{ns}/{name}/tree/{revision}[/{path}] the files, as the Hub lists them
    GET/HEAD /{ns}/{name}/resolve/{revision}/{file}           a file: ETag (its sha256), X-Repo-Commit,
                                                              sizes, single ranges
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from adapters.registry.cache import CachedAdapter
from adapters.registry.errors import AdapterNotFound, FileNotFound, InvalidName
from adapters.registry.refs import AdapterName
from adapters.registry.schemas import VersionView

from .. import hub, problems, ranges
from ..auth import Reader
from ..state import AppState, State

router = APIRouter(tags=["hub"], route_class=hub.HubRoute)

# Any repo id the client sends: one outside the naming rule (say a base model's `Org/Model-7B`, when
# HF_ENDPOINT sends every download here) is a repository that does not exist, not a malformed request.
Namespace = Annotated[str, Path(description="Namespace, e.g. acme.")]
Name = Annotated[str, Path(description="Adapter name, e.g. support-en.")]
Revision = Annotated[str, Path(description="A version number, alias, main, sha256:<digest> or commit id.")]
MEDIA_TYPES = {".json": "application/json"}
ERRORS = problems.responses(401, 403, 404, 409, 422, 503)


def _version(state: AppState, namespace: str, name: str, revision: str) -> VersionView:
    try:
        adapter = AdapterName(namespace, name)
    except InvalidName:
        raise AdapterNotFound(f"no adapter {namespace}/{name}") from None
    return state.registry.ready_version(hub.revision_ref(state.registry, adapter, revision))


def _open(state: AppState, namespace: str, name: str, revision: str) -> tuple[VersionView, CachedAdapter]:
    version = _version(state, namespace, name, revision)
    return state.registry.open_files(f"{version.adapter}:{version.number}")


def _date(version: VersionView) -> str:
    return (version.processed_at or version.created_at).isoformat().replace("+00:00", "Z")


def _entries(files: CachedAdapter) -> list[tuple[str, dict[str, Any]]]:
    try:
        return [(f.name, hub.lfs_entry(f.sha256, f.size)) for _, f in sorted(files.files.items())]
    finally:
        files.close()


def _model_info(state: AppState, namespace: str, name: str, revision: str) -> dict[str, Any]:
    version, files = _open(state, namespace, name, revision)
    adapter = state.registry.adapter(version.adapter)
    base_model = adapter.base_model or version.peft_config.get("base_model_name_or_path")
    tags = ["peft", "safetensors", "lora", *([adapter.task] if adapter.task else []), *adapter.tags]
    if base_model:
        tags.append(f"base_model:adapter:{base_model}")
    commit = hub.commit_id(version)
    return {
        "_id": commit,
        "id": version.adapter,
        "modelId": version.adapter,
        "author": namespace,
        "sha": commit,
        "lastModified": _date(version),
        "createdAt": _date(version),
        "private": not state.settings.allow_anonymous_read,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "library_name": "peft",
        "tags": tags,
        "cardData": {"library_name": "peft", **({"base_model": base_model} if base_model else {})},
        "siblings": [
            {
                "rfilename": path,
                "size": e["size"],
                "blobId": e["oid"],
                "lfs": {**e["lfs"], "sha256": e["lfs"]["oid"]},
            }
            for path, e in _entries(files)
        ],
        "usedStorage": (version.artifact_size or 0) + sum(f["size"] for f in version.files),
        # Not the Hub's: where this version sits in the registry.
        "adapters": {"ref": f"{version.adapter}:{version.number}", "aliases": version.aliases},
    }


@router.get(
    "/api/models/{namespace}/{name}",
    summary="Hub model info of the latest ready version (huggingface_hub's model_info)",
    responses=ERRORS,
)
def model_info(namespace: Namespace, name: Name, state: State, principal: Reader) -> dict[str, Any]:
    return _model_info(state, namespace, name, hub.MAIN)


@router.get(
    "/api/models/{namespace}/{name}/revision/{revision}",
    summary="Hub model info of the version a revision names",
    responses=ERRORS,
)
def model_info_at(
    namespace: Namespace, name: Name, revision: Revision, state: State, principal: Reader
) -> dict[str, Any]:
    return _model_info(state, namespace, name, revision)


@router.get(
    "/api/models/{namespace}/{name}/tree/{revision}",
    summary="The files of a version, as the Hub lists a repository's tree",
    responses=ERRORS,
)
def tree(
    namespace: Namespace,
    name: Name,
    revision: Revision,
    state: State,
    principal: Reader,
    expand: Annotated[bool, Query(description="Add each file's last commit.")] = False,
    recursive: Annotated[bool, Query(description="Accepted; a version has no folders.")] = False,
) -> list[dict[str, Any]]:
    version, files = _open(state, namespace, name, revision)
    last = {
        "id": hub.commit_id(version),
        "title": f"{version.adapter}:{version.number}",
        "date": _date(version),
    }
    return [
        {"type": "file", "path": path, **entry, **({"lastCommit": last} if expand else {})}
        for path, entry in _entries(files)
    ]


@router.get(
    "/api/models/{namespace}/{name}/tree/{revision}/{path:path}",
    summary="A folder of a version's tree (a version has none: 404)",
    responses=ERRORS,
)
def subtree(
    namespace: Namespace, name: Name, revision: Revision, path: str, state: State, principal: Reader
) -> list[dict[str, Any]]:
    version = _version(state, namespace, name, revision)
    raise FileNotFound(f"{version.adapter}:{version.number} has no folder {path!r}")


@router.head(
    "/{namespace}/{name}/resolve/{revision}/{filename:path}",
    operation_id="hub_resolve_head",
    summary="The headers of the GET (ETag, X-Repo-Commit, sizes): huggingface_hub's file metadata",
    responses=ERRORS,
)
@router.get(
    "/{namespace}/{name}/resolve/{revision}/{filename:path}",
    summary="A file of the version a revision names, as the Hub serves it",
    responses={
        200: {"description": "The file; ETag is its sha256, X-Repo-Commit the version's commit id"},
        206: {"description": "The part the `Range` header asked for"},
        **problems.responses(401, 403, 404, 409, 416, 422, 503),
    },
)
def resolve(
    request: Request,
    namespace: Namespace,
    name: Name,
    revision: Revision,
    filename: str,
    state: State,
    principal: Reader,
) -> Response:
    version, files = _open(state, namespace, name, revision)
    commit = hub.commit_id(version)
    if filename not in files.files:
        files.close()
        error = FileNotFound(f"{version.adapter}:{version.number} has no file {filename!r}")
        response = problems.registry_error(request, error)
        response.headers.update(
            {"X-Error-Code": "EntryNotFound", "X-Error-Message": str(error), "X-Repo-Commit": commit}
        )
        return response
    for other in files.files.values():
        if other.name != filename:
            other.close()
    cached = files.files[filename]
    etag = f'"{cached.sha256}"'
    headers = {
        "Content-Length": str(cached.size),
        "ETag": etag,
        "X-Linked-Etag": etag,
        "X-Linked-Size": str(cached.size),
        "X-Repo-Commit": commit,
        "X-Content-SHA256": cached.sha256,
        "Content-Disposition": f'inline; filename="{filename}"',
        # A number, digest or commit names fixed bytes; an alias or main may move.
        "Cache-Control": "private, max-age=31536000, immutable"
        if hub.is_pinned(revision)
        else "private, no-cache",
    }
    return ranges.send(
        request,
        size=cached.size,
        etag=etag,
        media_type=MEDIA_TYPES.get(filename[filename.rfind(".") :], "application/octet-stream"),
        headers=headers,
        whole=cached.chunks,
        part=lambda wanted: cached.range_chunks(wanted.start, wanted.end),
        close=cached.close,
    )
