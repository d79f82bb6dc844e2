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
from urllib.parse import unquote

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.models import Token, utcnow
from services.settings import Settings
from storage.errors import Forbidden, InvalidInput, NotFound
from storage.vocabulary import TokenScope, values

TOKEN_PREFIX = "tsk_"
# Slugs: lowercase ASCII, digits, '-' and '_'; no dots, so '..' can never appear in a path.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_SLUG = re.compile(SLUG_PATTERN)
# Parameter group names become directory names in stores: no separators, no leading dot.
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCOPE_RANK = {scope.value: scope.rank for scope in TokenScope}  # admin > write > read


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
    """The scopes as a token row stores them: plain strings, once each, read < write < admin."""
    # str(): a TokenScope member becomes its plain string (in messages and in the JSON column).
    out = sorted({str(s) for s in scopes}, key=lambda s: _SCOPE_RANK.get(s, -1))
    bad = [s for s in out if s not in _SCOPE_RANK]
    if bad or not out:
        raise InvalidInput(f"scopes {bad or '[]'} are not valid; use some of {values(TokenScope)}")
    return out


def has_scope(scopes: Iterable[str], needed: TokenScope) -> bool:
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


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


# After one percent-decoding, an escape that is still there for '.', '/', '\\' or '%' means the
# segment was encoded twice: a proxy or server that decodes again would see '..' or a separator.
_STILL_ENCODED = re.compile(r"%(2e|2f|5c|25)", re.IGNORECASE)


def _decoded_segments(path: str) -> list[str]:
    """A remote path's segments, each percent-decoded exactly once (as yarl does before an
    http(s) request), without the trailing empty one a final '/' leaves."""
    segments = [unquote(s) for s in path.split("/")]
    while len(segments) > 1 and segments[-1] == "":
        segments.pop()
    return segments


def _check_remote_path(url: str, path: str) -> list[str]:
    """The decoded segments of a client-given remote path, refusing any that could climb.

    The check runs on the decoded form because that is what gets requested: yarl turns
    '%2e%2e' into '..' and then removes it with the segment before it."""
    if any(c in path for c in "?#\\"):
        # A query or fragment would sit in the middle of every key joined onto the URL.
        raise Forbidden(f"store URL {url!r} contains '?', '#' or '\\'; give a plain path")
    segments = _decoded_segments(path)
    for seg in segments:
        if seg in (".", "..") or "/" in seg or "\\" in seg:
            raise Forbidden(f"store URL {url!r} contains '.' or '..' segments (maybe encoded)")
        if _STILL_ENCODED.search(seg):
            raise Forbidden(f"store URL {url!r} is percent-encoded twice; encode it once")
    return segments


def _split(url: str) -> tuple[str, list[str]]:
    """(protocol, path segments) of a URL or local path; local paths have protocol 'file'."""
    if _is_remote(url):
        proto, _, path = url.partition("://")
        return proto, _decoded_segments(path)
    path = url.removeprefix("file://").rstrip(os.sep) or os.sep
    return "file", path.split(os.sep) if path != os.sep else [""]


def is_under(url: str, prefix: str) -> bool:
    """Whether `url` is `prefix` or lies below it, compared on whole path segments (so
    's3://b/root-sibling' is not under 's3://b/root'). Neither side is resolved here."""
    proto, segments = _split(url)
    rproto, rsegments = _split(prefix)
    return proto == rproto and segments[: len(rsegments)] == rsegments


def _check_no_links(real: str) -> None:
    """Refuse a local store that contains symbolic links.

    Reads follow links, so a link to /etc or to another store would be read as part of this
    one. Checking each link's target is not enough (a target inside a trusted prefix may hold
    links of its own), and tinysub never writes links, so any link is refused. The walk costs
    one lstat per file, paid once, at registration."""
    if not os.path.isdir(real):
        return
    for top, dirs, files in os.walk(real, followlinks=False):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(top, name)):
                inside = os.path.relpath(os.path.join(top, name), real)
                raise Forbidden(
                    f"the store contains a symbolic link ({inside!r}); tinysub stores hold none "
                    "and links could lead reads outside the trusted prefixes",
                    detail={"link": inside},
                )


def confine_url(url: str, settings: Settings) -> str:
    """The canonical form of a client-given store URL, if it lies under an allowed root.

    Local paths are resolved (symlinks and '..') before the check and must hold no symbolic
    links; remote URLs are percent-decoded once, must use the protocol of an allowed root,
    contain no '.' or '..' segment (plain or encoded), and lie under its prefix segment by
    segment.
    """
    if not isinstance(url, str) or not url or len(url) > 2048 or _bad_chars(url):
        raise InvalidInput("store URL is empty, too long or contains control characters")
    if "::" in url:
        # fsspec chains filesystems with '::' ("zip://x::file:///etc/a.zip"): the part after
        # the first '::' would pick a second filesystem and path that no root check has seen.
        raise Forbidden(f"store URL {url!r} chains filesystems ('::'); give a plain URL")
    if _is_remote(url):
        _check_remote_path(url, url.partition("://")[2])
        if any(is_under(url, root) for root in allowed_roots(settings) if _is_remote(root)):
            return url
        raise Forbidden(f"store URL {url!r} is outside the store root and trusted prefixes")
    path = url[len("file://") :] if url.startswith("file://") else url
    if not os.path.isabs(path):
        raise InvalidInput(f"store path {path!r} must be absolute")
    real = os.path.realpath(path)
    for root in allowed_roots(settings):
        if _is_remote(root):
            continue
        if is_under(real, os.path.realpath(root.removeprefix("file://"))):
            _check_no_links(real)
            return real
    raise Forbidden(f"store path {path!r} is outside the store root and trusted prefixes")
