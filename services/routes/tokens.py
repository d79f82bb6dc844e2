"""Tokens over HTTP (admin scope). The first admin token comes from `tinysub token create`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select

from services.deps import Admin, SessionDep
from services.models import Token
from services.routes.auth_first import AuthFirstRoute
from services.schemas import TokenCreate, TokenCreated, TokenPublic
from services.security import create_token, revoke_token

router = APIRouter(prefix="/tokens", tags=["tokens"], route_class=AuthFirstRoute)


@router.post("", response_model=TokenCreated, status_code=201)
def create(body: TokenCreate, session: SessionDep, _: Admin) -> dict:
    row, plain = create_token(session, body.name, body.scopes)
    session.commit()
    return {**TokenPublic.model_validate(row).model_dump(), "token": plain}


@router.get("", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, _: Admin) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.id)))


@router.delete("/{token_id}", response_model=TokenPublic)
def revoke(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, _: Admin
) -> Token:
    row = revoke_token(session, token_id)
    session.commit()
    return row
