"""Certificates for a Dask cluster that only speaks mutual TLS.

`generate(directory)` makes a private CA and one certificate per Dask role (scheduler, worker,
client) signed by it, each with its own key. Dask's `Security` then loads them from its own
configuration (`dask_env` gives the environment variables): every connection is TLS, and each
side must present a certificate from this CA, so a process without one cannot reach the
scheduler. Dask checks the chain, not host names or roles (`Security._get_tls_context`): any
certificate of the CA is accepted in any role, and the names in them are for people.

docker-compose.yml runs `python -m worker.executors.dask_tls /run/dask-tls --ca-dir
/var/lib/dask-ca` once before the cluster starts: running it again changes nothing unless a
file is missing, damaged, not from the CA, or within `renew_within` of its expiry; `--force`
issues a new CA and new certificates (after a leak; restart the cluster and the registry).
The CA's key can be kept in its own folder (`ca_dir`), which no cluster process mounts.

Keys are ECDSA P-256 (fast handshakes, small files), written atomically with mode 0600.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography is imported where it is used: an optional dependency
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

log = logging.getLogger(__name__)

ROLES = ("scheduler", "worker", "client")
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
# Names in each certificate's subjectAltName: the compose services, and loopback for tests.
SUBJECT_NAMES = {
    "scheduler": ("dask-scheduler", "localhost"),
    "worker": ("dask-worker", "localhost"),
    "client": ("tinysub-client",),
}
CA_DAYS = 3650
CERT_DAYS = 825
RENEW_WITHIN = dt.timedelta(days=30)
_SKEW = dt.timedelta(minutes=5)  # valid from a little before now: clocks of containers differ


def cert_name(role: str) -> str:
    return f"{role}.pem"


def key_name(role: str) -> str:
    return f"{role}-key.pem"


@dataclass(frozen=True)
class ClusterCerts:
    """Where a cluster's certificates are, and what the call that returned it (re)issued
    ("ca" and role names; empty when everything was already valid)."""

    directory: Path
    issued: tuple[str, ...] = ()

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_CERT

    def cert(self, role: str) -> Path:
        return self.directory / cert_name(_role(role))

    def key(self, role: str) -> Path:
        return self.directory / key_name(_role(role))


def _role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown Dask role {role!r}; use one of {list(ROLES)}")
    return role


def dask_env(directory: str | PurePath, role: str) -> dict[str, str]:
    """Dask's configuration, as environment variables, for a process in `role` whose
    certificates are in `directory` (a path as that process sees it): TLS required, the CA,
    and the role's certificate and key. docker-compose.yml sets exactly these."""
    base = PurePosixPath(directory)
    prefix = f"DASK_DISTRIBUTED__COMM__TLS__{_role(role).upper()}"
    return {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(base / CA_CERT),
        f"{prefix}__CERT": str(base / cert_name(role)),
        f"{prefix}__KEY": str(base / key_name(role)),
    }


def security(directory: str | os.PathLike[str], role: str = "client") -> Any:
    """A `distributed.Security` for `role` from the certificates in `directory`, for callers
    that cannot set Dask's configuration (the environment does it in the containers)."""
    from distributed.security import Security  # noqa: PLC0415 - optional (dask extra)

    certs = ClusterCerts(Path(directory))
    return Security(
        require_encryption=True,
        tls_ca_file=str(certs.ca_file),
        **{f"tls_{role}_cert": str(certs.cert(role)), f"tls_{role}_key": str(certs.key(role))},
    )


def generate(
    directory: str | os.PathLike[str],
    *,
    ca_dir: str | os.PathLike[str] | None = None,
    cert_days: int = CERT_DAYS,
    ca_days: int = CA_DAYS,
    renew_within: dt.timedelta = RENEW_WITHIN,
    force: bool = False,
) -> ClusterCerts:
    """Make sure `directory` holds the CA's certificate and a valid certificate and key per
    role, issuing only what is missing or not valid; the CA's key goes to `ca_dir` (default:
    `directory`).

    A new CA (first run, lost or damaged CA files, CA near expiry, or `force`) means new
    certificates for every role. A role's certificate is reissued when it or its key is
    missing or unreadable, they do not match, it was not signed by the CA, or it expires
    within `renew_within`.
    """
    out = Path(directory)
    key_dir = Path(ca_dir) if ca_dir is not None else out
    out.mkdir(parents=True, exist_ok=True)
    if key_dir != out:
        key_dir.mkdir(parents=True, exist_ok=True)
        key_dir.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    issued: list[str] = []

    ca = None if force else _load_pair(out / CA_CERT, key_dir / CA_KEY)
    if ca is not None and not _fresh_ca(ca[0], now, renew_within):
        ca = None
    if ca is None:
        ca = _new_ca(now, ca_days)
        _write(key_dir / CA_KEY, _key_pem(ca[1]), 0o600)
        _write(out / CA_CERT, _cert_pem(ca[0]), 0o644)
        issued.append("ca")
    ca_cert, ca_key = ca
    new_ca = bool(issued)

    for role in ROLES:
        pair = None if new_ca else _load_pair(out / cert_name(role), out / key_name(role))
        if pair is not None and _fresh_leaf(pair[0], ca_cert, now, renew_within):
            continue
        cert, key = _new_leaf(role, ca_cert, ca_key, now, cert_days)
        # Key first: a crash in between leaves a pair that does not match, reissued next time.
        _write(out / key_name(role), _key_pem(key), 0o600)
        _write(out / cert_name(role), _cert_pem(cert), 0o644)
        issued.append(role)

    if issued:
        log.info("issued %s in %s", ", ".join(issued), out)
    else:
        log.info("certificates in %s are valid; nothing issued", out)
    return ClusterCerts(out, tuple(issued))


def _load_pair(cert_path: Path, key_path: Path) -> tuple[Any, Any] | None:
    """The certificate and key at these paths, or None if either is missing, unreadable or
    they do not belong together."""
    from cryptography import x509  # noqa: PLC0415 - optional (dask extra)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - optional (dask extra)

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        return None
    return cert, key


def _public_der(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - optional (dask extra)

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fresh_ca(cert: x509.Certificate, now: dt.datetime, renew_within: dt.timedelta) -> bool:
    from cryptography import x509  # noqa: PLC0415 - optional (dask extra)

    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
    return is_ca and cert.not_valid_after_utc - now > renew_within


def _fresh_leaf(cert: Any, ca_cert: Any, now: dt.datetime, renew_within: dt.timedelta) -> bool:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - optional (dask extra)

    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - now <= renew_within:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - optional (dask extra)

    return ec.generate_private_key(ec.SECP256R1())


def _new_ca(now: dt.datetime, days: int) -> tuple[Any, Any]:
    from cryptography import x509  # noqa: PLC0415 - optional (dask extra)
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - optional (dask extra)
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - optional (dask extra)

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tinysub Dask cluster CA")])
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_leaf(role: str, ca_cert: Any, ca_key: Any, now: dt.datetime, days: int) -> tuple[Any, Any]:
    from cryptography import x509  # noqa: PLC0415 - optional (dask extra)
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - optional (dask extra)
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415 - optional (dask extra)

    key = _new_key()
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    # Every role both listens and connects (workers talk to each other), so both usages.
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tinysub-{role}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(eku, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in SUBJECT_NAMES[role]]), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - optional (dask extra)

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - optional (dask extra)

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write, fsync, rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened beyond `mode`
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m worker.executors.dask_tls DIRECTORY [--ca-dir DIR] [--force]`."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.executors.dask_tls",
        description="Create (or keep, when still valid) a CA and the scheduler, worker and "
        "client certificates of a Dask cluster that requires mutual TLS.",
    )
    parser.add_argument("directory", type=Path, help="where the certificates and keys go")
    parser.add_argument(
        "--ca-dir", type=Path, default=None, help="where the CA's key goes (default: DIRECTORY)"
    )
    parser.add_argument("--days", type=int, default=CERT_DAYS, help="validity of a certificate")
    parser.add_argument("--force", action="store_true", help="issue a new CA and certificates")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="tinysub-dask-certs: %(message)s")
    generate(args.directory, ca_dir=args.ca_dir, cert_days=args.days, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
