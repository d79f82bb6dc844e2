"""Access and input safety: hashed bearer tokens with scopes, slugs, and store URL confinement.

Tokens are random strings shown once; only their sha256 is stored. A presented token is hashed,
looked up by hash and compared with `hmac.compare_digest`, and every request reads the row, so
revoking a token takes effect on the next request. URLs given by clients are confined to the
store root and the configured trusted prefixes: no `..` escapes, no arbitrary fsspec protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.models import SCOPES, Token, utcnow
from services.settings import Settings
from storage.errors import Forbidden, InvalidInput, NotFound

TOKEN_PREFIX = "tsk_"
# Slugs: lowercase ASCII, digits, '-' and '_'; no dots, so '..' can never appear in a path.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_SLUG = re.compile(SLUG_PATTERN)
# Parameter group names become directory names in stores: no separators, no leading dot.
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCOPE_RANK = {scope: i for i, scope in enumerate(SCOPES)}  # admin > write > read


def check_slug(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise InvalidInput(
            f"{what} {value!r} is not a slug: use 1-64 of a-z, 0-9, '-', '_', "
            "starting with a letter or digit"
        )
    return value


def check_group_name(name: str) -> str:
    if not isinstance(name, str) or not _GROUP.fullmatch(name) or ".." in name:
        raise InvalidInput(
            f"parameter group name {name!r} cannot name a directory; use letters, digits, "
            "'.', '-' and '_' (no '..')"
        )
    return name


# ------------------------------------------------------------------------------------- tokens
def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    out = sorted(set(scopes), key=_SCOPE_RANK.get)
    bad = [s for s in out if s not in _SCOPE_RANK]
    if bad or not out:
        raise InvalidInput(f"scopes {bad or '[]'} are not valid; use some of {list(SCOPES)}")
    return out


def has_scope(scopes: Iterable[str], needed: str) -> bool:
    """admin implies write implies read."""
    return any(_SCOPE_RANK.get(s, -1) >= _SCOPE_RANK[needed] for s in scopes)


def create_token(session: Session, name: str, scopes: Iterable[str]) -> tuple[Token, str]:
    """Store a new token's hash; returns the row and the token itself (shown only once)."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = Token(name=name, token_hash=hash_token(plain), scopes=check_scopes(scopes))
    session.add(row)
    session.flush()
    return row, plain


def authenticate(session: Session, presented: str) -> Token | None:
    """The live token row for a presented secret, or None."""
    digest = hash_token(presented)
    row = session.scalars(select(Token).where(Token.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        return None
    return row


def revoke_token(session: Session, token_id: int) -> Token:
    row = session.get(Token, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


# ---------------------------------------------------------------------------------- store URLs
def _bad_chars(value: str) -> bool:
    return any(unicodedata.category(c)[0] in ("C", "Z") and c != " " for c in value) or (
        value != value.strip()
    )


def allowed_roots(settings: Settings) -> list[str]:
    return [settings.resolved_store_root, *settings.trusted_store_prefixes]


def confine_url(url: str, settings: Settings) -> str:
    """The canonical form of a client-given store URL, if it lies under an allowed root.

    Local paths are resolved (symlinks and '..') before the check; remote URLs must use the
    protocol of an allowed root, contain no '.' or '..' segment, and start with its prefix.
    """
    if not isinstance(url, str) or not url or len(url) > 2048 or _bad_chars(url):
        raise InvalidInput("store URL is empty, too long or contains control characters")
    if "::" in url:
        # fsspec chains filesystems with '::' ("zip://x::file:///etc/a.zip"): the part after
        # the first '::' would pick a second filesystem and path that no root check has seen.
        raise Forbidden(f"store URL {url!r} chains filesystems ('::'); give a plain URL")
    if "://" in url and not url.startswith("file://"):
        proto, _, path = url.partition("://")
        segments = path.split("/")
        if any(s in (".", "..") for s in segments):
            raise Forbidden(f"store URL {url!r} contains '.' or '..' segments")
        for root in allowed_roots(settings):
            if "://" not in root or root.startswith("file://"):
                continue
            rproto, _, rpath = root.partition("://")
            rpath = rpath.rstrip("/")
            if proto == rproto and (path == rpath or path.startswith(rpath + "/")):
                return url
        raise Forbidden(f"store URL {url!r} is outside the store root and trusted prefixes")
    path = url[len("file://") :] if url.startswith("file://") else url
    if not os.path.isabs(path):
        raise InvalidInput(f"store path {path!r} must be absolute")
    real = os.path.realpath(path)
    for root in allowed_roots(settings):
        if "://" in root and not root.startswith("file://"):
            continue
        rroot = os.path.realpath(root.removeprefix("file://"))
        if real == rroot or real.startswith(rroot.rstrip(os.sep) + os.sep):
            return real
    raise Forbidden(f"store path {path!r} is outside the store root and trusted prefixes")
