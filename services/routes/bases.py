"""Bases: order (-> job), list versions, pull a manifest by version or alias, stream layers,
name versions with aliases.

    POST /v1/tasks/{id}/bases                                        order -> 202 job
    GET  /v1/tasks/{id}/bases?kind=                                  every version
    GET  /v1/tasks/{id}/bases/{kind}?version=|alias=                 manifest (ready only)
    GET  /v1/tasks/{id}/bases/{kind}/versions/{v}                    one version, any status
    GET  /v1/tasks/{id}/bases/{kind}/versions/{v}/layers/{layer}     bytes (Range, ETag)
    GET|PUT|DELETE /v1/tasks/{id}/bases/{kind}/aliases[/{name}]
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from services import bases as basis_service
from services import quotas
from services.deps import Reader, RegistryDep, SessionDep, Writer
from services.models import Alias, Basis
from services.routes.auth_first import AuthFirstRoute
from services.routes.jobs import TOO_MANY_JOBS, job_public, notify_runner
from services.routes.tasks import TaskId
from services.schemas import (
    AliasPublic,
    AliasSet,
    BasisCreate,
    BasisList,
    BasisPublic,
    JobPublic,
    Slug,
)
from services.security import SLUG_PATTERN
from services.streaming import etag_matches, parse_range, prefetched, quote_etag, read_ahead
from services.trajectories import get_task
from storage.basis import BasisStore
from storage.errors import Conflict, NotFound, StorageError
from storage.vocabulary import BasisKind

router = APIRouter(prefix="/tasks/{task_id}/bases", tags=["bases"], route_class=AuthFirstRoute)
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
AliasName = Annotated[str, Path(pattern=SLUG_PATTERN)]


@router.post("", response_model=JobPublic, status_code=202, responses=TOO_MANY_JOBS)
def order(
    task_id: TaskId,
    body: BasisCreate,
    request: Request,
    registry: RegistryDep,
    session: SessionDep,
    caller: Writer,
) -> dict:
    """Order a basis: validates everything, then queues a job for a new version (429 when the
    token has `max_pending_jobs_per_token` jobs pending or running)."""
    task = get_task(session, task_id)
    params = basis_service.validate_order(registry, session, task, body)
    for attempt in range(5):
        try:
            with quotas.one_more_job(registry, session, caller.token_id):
                _basis, job = basis_service.create_basis_job(
                    registry, session, task_id, body.kind, params, token_id=caller.token_id
                )
                session.commit()
            break
        except IntegrityError:  # another order took the same version number: take the next
            session.rollback()
            if attempt == 4:
                raise Conflict("could not allocate a version; retry") from None
    notify_runner(request)
    return job_public(session, job)


@router.get("", response_model=BasisList)
def list_versions(
    task_id: TaskId,
    session: SessionDep,
    _: Reader,
    kind: Annotated[BasisKind | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    get_task(session, task_id)
    q = select(Basis).where(Basis.task_id == task_id)
    if kind:
        q = q.where(Basis.kind == kind)
    total = session.scalar(select(func.count()).select_from(q.subquery()))
    rows = session.scalars(
        q.order_by(Basis.kind, Basis.version.desc()).offset(offset).limit(limit)
    ).all()
    return {
        "items": [basis_service.basis_public(session, b) for b in rows],
        "total": total,
        "offset": offset,
        "limit": limit,
    }


@router.get(
    "/{kind}",
    response_model=BasisPublic,
    responses={304: {"description": "The manifest is unchanged (If-None-Match)."}},
)
def manifest(
    task_id: TaskId,
    kind: BasisKind,
    session: SessionDep,
    _: Reader,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    alias: Annotated[Slug | None, Query()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The manifest of a ready basis: layers, shapes, dtype, sha256 and download paths."""
    basis = basis_service.require_ready(
        basis_service.resolve(session, task_id, kind, version, alias)
    )
    body = jsonable_encoder(BasisPublic.model_validate(basis_service.basis_public(session, basis)))
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    etag = quote_etag(hashlib.sha256(raw).hexdigest())
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)


@router.get("/{kind}/versions/{version}", response_model=BasisPublic)
def get_version(
    task_id: TaskId, kind: BasisKind, version: Version, session: SessionDep, _: Reader
) -> dict:
    get_task(session, task_id)
    return basis_service.basis_public(
        session, basis_service.get_version(session, task_id, kind, version)
    )


_LAYER = "/{kind}/versions/{version}/layers/{layer}"
LayerName = Annotated[str, Path(max_length=128)]
RangeHeader = Annotated[str | None, Header(alias="range")]


def _layer_response(
    registry,
    session,
    task_id: str,
    kind: str,
    version: int,
    layer: str,
    range_: str | None,
    if_none_match: str | None,
    if_range: str | None,
    *,
    head: bool,
) -> Response:
    basis = basis_service.require_ready(basis_service.get_version(session, task_id, kind, version))
    info = next((i for i in basis.layers or [] if i["name"] == layer), None)
    if info is None:
        raise NotFound(f"{kind} basis v{version} of {task_id!r} has no layer {layer!r}")
    etag = quote_etag(info["sha256"])
    size = int(info["nbytes"])
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-cache",
        "X-Tinysub-Sha256": info["sha256"],
        "X-Tinysub-Shape": ",".join(str(s) for s in info["shape"]),
        "X-Tinysub-Dtype": info["dtype"],
    }
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    span = None if (if_range and if_range.strip() != etag) else parse_range(range_, size)
    start, stop = span or (0, size)
    headers["Content-Length"] = str(stop - start)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    if head:  # the headers GET would send, Content-Type included (RFC 9110 9.3.2)
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    store = BasisStore.open(basis.url, registry.settings.storage_options)
    if store.layer(layer).sha256 != info["sha256"]:
        raise StorageError(f"the stored manifest of {basis.url} disagrees with the registry")
    blocks = store.iter_bytes(layer, start, stop, block_bytes=registry.settings.stream_block_bytes)
    return StreamingResponse(
        read_ahead(prefetched(blocks)),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


@router.get(
    _LAYER,
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "C-order float32"},
        206: {"description": "The requested byte range."},
        304: {"description": "Unchanged (If-None-Match matched the sha256 ETag)."},
        416: {"description": "Range not satisfiable."},
    },
)
def layer_bytes(
    task_id: TaskId,
    kind: BasisKind,
    version: Version,
    layer: LayerName,
    registry: RegistryDep,
    session: SessionDep,
    _: Reader,
    range_: RangeHeader = None,
    if_none_match: Annotated[str | None, Header()] = None,
    if_range: Annotated[str | None, Header()] = None,
) -> Response:
    """V of one layer as little-endian float32 bytes, row-major (D, k), streamed in blocks.
    ETag is the layer's sha256; one byte range per request (206); If-None-Match gives 304."""
    return _layer_response(
        registry,
        session,
        task_id,
        kind,
        version,
        layer,
        range_,
        if_none_match,
        if_range,
        head=False,
    )


@router.head(
    _LAYER,
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The headers of GET, no body.",
        },
        206: {"description": "The headers of the requested byte range."},
        304: {"description": "Unchanged (If-None-Match matched the sha256 ETag)."},
        416: {"description": "Range not satisfiable."},
    },
)
def layer_head(
    task_id: TaskId,
    kind: BasisKind,
    version: Version,
    layer: LayerName,
    registry: RegistryDep,
    session: SessionDep,
    _: Reader,
    range_: RangeHeader = None,
    if_none_match: Annotated[str | None, Header()] = None,
    if_range: Annotated[str | None, Header()] = None,
) -> Response:
    """The headers of `layer_bytes` (size, sha256, shape) without the body."""
    return _layer_response(
        registry,
        session,
        task_id,
        kind,
        version,
        layer,
        range_,
        if_none_match,
        if_range,
        head=True,
    )


@router.get("/{kind}/aliases", response_model=list[AliasPublic])
def list_aliases(task_id: TaskId, kind: BasisKind, session: SessionDep, _: Reader) -> list[Alias]:
    get_task(session, task_id)
    return list(
        session.scalars(
            select(Alias).where(Alias.task_id == task_id, Alias.kind == kind).order_by(Alias.name)
        )
    )


@router.put("/{kind}/aliases/{name}", response_model=AliasPublic)
def set_alias(
    task_id: TaskId,
    kind: BasisKind,
    name: AliasName,
    body: AliasSet,
    registry: RegistryDep,
    session: SessionDep,
    _: Writer,
) -> Alias:
    """Point an alias at a ready version (moved in one transaction)."""
    get_task(session, task_id)
    with registry.locks(("alias", task_id, kind)):
        row = basis_service.set_alias(session, task_id, kind, name, body.version)
        session.commit()
    return row


@router.delete("/{kind}/aliases/{name}", status_code=204)
def delete_alias(
    task_id: TaskId,
    kind: BasisKind,
    name: AliasName,
    registry: RegistryDep,
    session: SessionDep,
    _: Writer,
) -> Response:
    get_task(session, task_id)
    with registry.locks(("alias", task_id, kind)):
        basis_service.delete_alias(session, task_id, kind, name)
        session.commit()
    return Response(status_code=204)
