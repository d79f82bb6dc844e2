"""Request dependencies as `Annotated[..., Depends()]` aliases: the registry, a DB session, and
the caller's token checked for a scope."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.context import Registry
from services.security import authenticate, has_scope
from services.settings import Settings
from storage.errors import Forbidden, Unauthorized
from storage.vocabulary import TokenScope


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_settings(request: Request) -> Settings:
    return request.app.state.registry.settings


def get_session(request: Request) -> Iterator[Session]:
    # Routes commit explicitly; whatever they did not commit is rolled back here.
    with request.app.state.registry.db.sessionmaker() as session:
        yield session


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="A token from `tinysub token create`.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token (id, name, scopes) or the anonymous reader."""

    token_id: int | None
    name: str
    scopes: tuple[str, ...]


ANONYMOUS_READER = Principal(token_id=None, name="anonymous", scopes=(TokenScope.READ.value,))


def require(scope: TokenScope) -> Callable[..., Principal]:
    """A dependency that admits callers holding `scope` (admin > write > read)."""

    def check(
        registry: RegistryDep,
        session: SessionDep,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if creds is None:
            if scope == TokenScope.READ and registry.settings.anonymous_read:
                return ANONYMOUS_READER
            raise Unauthorized("this endpoint needs a bearer token (Authorization: Bearer ...)")
        row = authenticate(session, creds.credentials)
        if row is None:
            raise Unauthorized("the token is unknown or revoked")
        if not has_scope(row.scopes, scope):
            raise Forbidden(
                f"token {row.name!r} has scopes {row.scopes}; this needs {scope.value!r}"
            )
        return Principal(token_id=row.id, name=row.name, scopes=tuple(row.scopes))

    check.__name__ = f"require_{scope}"
    return check


Reader = Annotated[Principal, Depends(require(TokenScope.READ))]
Writer = Annotated[Principal, Depends(require(TokenScope.WRITE))]
Admin = Annotated[Principal, Depends(require(TokenScope.ADMIN))]
