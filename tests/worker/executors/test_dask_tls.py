"""The Dask cluster's certificates (worker/executors/dask_tls.py), and a real cluster that
requires mutual TLS, configured as docker-compose.yml configures it: Dask's own environment
variables (`dask_env`), `dask scheduler --protocol tls` and `dask worker tls://...`.

A basis is computed through tinysub's DaskExecutor in a separate process that has only the
client's environment (as the registry container does), and clients without a certificate from
the cluster's CA are refused: plain TCP, TLS with no client certificate, and TLS with a
certificate from another CA.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.promised import import_or_skip_missing
from worker.executors import dask_tls
from worker.executors.dask_tls import ROLES, ClusterCerts


@pytest.fixture(autouse=True)
def _cryptography():
    """The generator needs cryptography (the dask extra): missing, it is a missing component."""
    import_or_skip_missing("dask", "cryptography.x509", "cryptography is missing (dask extra)")


def _load(path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _files(certs: ClusterCerts) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in certs.directory.iterdir()}


# ---- the generator -------------------------------------------------------------------------


def test_every_role_gets_a_certificate_that_chains_to_the_ca(tmp_path):
    from cryptography import x509

    certs = dask_tls.generate(tmp_path / "tls", ca_dir=tmp_path / "ca")
    assert certs.issued == ("ca", *ROLES)
    ca = _load(certs.ca_file)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    serials = set()
    for role in ROLES:
        cert = _load(certs.cert(role))
        cert.verify_directly_issued_by(ca)  # raises unless signed by the CA's key
        assert cert.issuer == ca.subject
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        # Its key is the one next to it, readable by the owner only.
        key = certs.key(role)
        assert (key.stat().st_mode & 0o777) == 0o600
        ssl.create_default_context().load_cert_chain(certs.cert(role), key)
        serials.add(cert.serial_number)
    assert len(serials) == len(ROLES)
    # The CA's key is not among the files the cluster mounts.
    assert (tmp_path / "ca" / dask_tls.CA_KEY).exists()
    assert not any("ca-key" in name for name in _files(certs))


def test_generate_is_idempotent(tmp_path):
    first = dask_tls.generate(tmp_path / "tls", ca_dir=tmp_path / "ca")
    before = _files(first)
    again = dask_tls.generate(tmp_path / "tls", ca_dir=tmp_path / "ca")
    assert again.issued == ()
    assert _files(again) == before


def test_only_what_is_missing_or_invalid_is_reissued(tmp_path):
    tls, ca_dir = tmp_path / "tls", tmp_path / "ca"
    certs = dask_tls.generate(tls, ca_dir=ca_dir)
    before = _files(certs)
    certs.key("worker").unlink()  # lost
    certs.cert("client").write_bytes(b"not a certificate")  # damaged
    again = dask_tls.generate(tls, ca_dir=ca_dir)
    assert again.issued == ("worker", "client")
    after = _files(again)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["scheduler.pem"] == before["scheduler.pem"]
    assert after["worker.pem"] != before["worker.pem"]
    for role in ("worker", "client"):
        _load(again.cert(role)).verify_directly_issued_by(_load(again.ca_file))


def test_a_certificate_of_another_ca_is_replaced(tmp_path):
    tls = tmp_path / "tls"
    dask_tls.generate(tls, ca_dir=tmp_path / "ca")
    other = dask_tls.generate(tmp_path / "other", ca_dir=tmp_path / "other-ca")
    for name in ("scheduler.pem", "scheduler-key.pem"):
        (tls / name).write_bytes((other.directory / name).read_bytes())
    assert dask_tls.generate(tls, ca_dir=tmp_path / "ca").issued == ("scheduler",)


def test_a_lost_ca_key_or_force_means_a_new_ca_and_new_certificates(tmp_path):
    tls, ca_dir = tmp_path / "tls", tmp_path / "ca"
    first = _files(dask_tls.generate(tls, ca_dir=ca_dir))
    (ca_dir / dask_tls.CA_KEY).unlink()
    second = dask_tls.generate(tls, ca_dir=ca_dir)
    assert second.issued == ("ca", *ROLES)
    assert all(_files(second)[name] != first[name] for name in first)
    assert dask_tls.generate(tls, ca_dir=ca_dir, force=True).issued == ("ca", *ROLES)


def test_certificates_near_expiry_are_renewed(tmp_path):
    tls = tmp_path / "tls"
    dask_tls.generate(tls, cert_days=10)  # CA key next to the certificates (the default)
    assert (tls / dask_tls.CA_KEY).exists()
    renewed = dask_tls.generate(tls, renew_within=dt.timedelta(days=30))
    assert renewed.issued == ROLES  # the CA (ten years) is kept
    assert dask_tls.generate(tls).issued == ()


def test_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker.executors.dask_tls", str(tmp_path / "tls"),
         "--ca-dir", str(tmp_path / "ca")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "issued ca, scheduler, worker, client" in done.stderr
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == sorted(
        ["ca.pem"] + [f"{r}.pem" for r in ROLES] + [f"{r}-key.pem" for r in ROLES]
    )


def test_dask_env_is_what_dask_reads(tmp_path, monkeypatch):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    from distributed.security import Security

    certs = dask_tls.generate(tmp_path)
    for role in ROLES:
        with monkeypatch.context() as m:
            for name, value in dask_tls.dask_env(tmp_path, role).items():
                m.setenv(name, value)
            dask.config.refresh()
            sec = Security()
            assert sec.require_encryption is True
            assert sec.tls_ca_file == str(certs.ca_file)
            assert getattr(sec, f"tls_{role}_cert") == str(certs.cert(role))
            assert getattr(sec, f"tls_{role}_key") == str(certs.key(role))
    dask.config.refresh()
    with pytest.raises(ValueError, match="unknown Dask role"):
        dask_tls.dask_env(tmp_path, "nanny")


# ---- a real cluster that requires mutual TLS -----------------------------------------------

# The registry's side: only the environment says TLS; the executor is built by name and address
# as the job runner builds it (services/jobs/pool.py). Prints the basis' layer digests as JSON.
CLIENT_SCRIPT = """
import json, sys
from worker.executors import make_executor
from worker.svd.bases import task_basis

store, out, address = sys.argv[1:]
ex = make_executor("dask", address)
try:
    bases = task_basis(store, out, 3, executor=ex, block_cols=64).bases
finally:
    ex.close()
print(json.dumps({name: bases[0].layer(name).sha256 for name in bases[0].layer_names}))
"""


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """`dask scheduler` + two `dask worker`s on loopback, with the compose services' Dask
    environment; yields (address, certificate folder, the scheduler's Process)."""
    import_or_skip_missing("dask", "distributed")
    from services.local import free_port
    from tests.topology import Process, _script, child_env, port_open

    work = tmp_path_factory.mktemp("dask-tls")
    certs = dask_tls.generate(work / "tls", ca_dir=work / "ca")
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    dask = _script("dask")
    scheduler = Process(
        "dask-scheduler",
        [dask, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", f"127.0.0.1:{free_port()}", "--no-show"],
        work / "scheduler.log",
        child_env(dask_tls.dask_env(certs.directory, "scheduler")),
    )  # fmt: skip
    workers = [
        Process(
            f"dask-worker-{i}",
            [
                dask,
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
                "--local-directory",
                str(work / f"w{i}"),
            ],
            work / f"worker-{i}.log",
            child_env(dask_tls.dask_env(certs.directory, "worker")),
        )  # fmt: skip
        for i in range(2)
    ]
    procs = [scheduler, *workers]
    try:
        scheduler.start().wait_until(lambda: port_open(port), 60, "an open port")
        for w in workers:
            w.start()
        from dask.distributed import Client

        with Client(address, security=dask_tls.security(certs.directory), timeout=30) as c:
            c.wait_for_workers(2, timeout=90)
            # The workers listen on TLS too (they talk to each other and to the scheduler).
            assert all(a.startswith("tls://") for a in c.scheduler_info()["workers"])
        yield address, certs.directory, scheduler
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from storage.layout import build_layout
    from storage.trajectory import TrajectoryStore
    from tests.conftest import make_trajectory

    layout = build_layout(
        [("encoder.layer.0.attention.weight", (40, 30)), ("encoder.layer.0.attention.bias", (30,))]
    )
    root = tmp_path_factory.mktemp("trajectory")
    store = TrajectoryStore.create(root / "t", layout, model_name="tiny", chunk_cols=64)
    for i, row in enumerate(make_trajectory(layout, 6, seed=3)):
        store.append(row, step=i, epoch=i)
    return store.url


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_executor_computes_a_basis_over_mutual_tls_configured_by_environment(
    tls_cluster, small_store, tmp_path
):
    from storage.basis import BasisStore
    from tests.topology import child_env
    from worker.executors import LocalExecutor
    from worker.svd.bases import task_basis

    address, cert_dir, _ = tls_cluster
    env = {k: v for k, v in child_env().items() if not k.startswith("DASK_")}
    env.update(dask_tls.dask_env(cert_dir, "client"))
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, small_store, str(tmp_path / "dask"), address],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    over_tls = json.loads(done.stdout.strip().splitlines()[-1])

    with LocalExecutor(2) as ex:
        local = task_basis(small_store, str(tmp_path / "local"), 3, executor=ex, block_cols=64)
    here = local.bases[0]
    assert over_tls == {name: here.layer(name).sha256 for name in here.layer_names}
    there = BasisStore.open(str(tmp_path / "dask"))
    for name in here.layer_names:
        assert np.array_equal(there.load(name), here.load(name))


def _talk_without_a_certificate(host: str, port: int, cafile: Path) -> None:
    """Open TLS to the scheduler trusting its CA, with no certificate of our own, and read;
    a server that asked for none would wait for a Dask message (a timeout, not a refusal)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"\0" * 8)
        if not tls.recv(1):
            raise ConnectionResetError("closed by the scheduler")


@pytest.mark.integration
def test_a_client_without_the_clusters_certificate_is_refused(tls_cluster, tmp_path):
    from distributed import Client

    address, cert_dir, scheduler = tls_cluster
    refused_before = scheduler.log_tail(1 << 20).count("TLS handshake failed")
    host, port = address.removeprefix("tls://").split(":")

    # Plain TCP: the scheduler only speaks TLS.
    with pytest.raises((OSError, TimeoutError)):
        Client(f"tcp://{host}:{port}", timeout=5)

    # TLS that trusts the cluster's CA but has no certificate of its own: the handshake is
    # refused by the scheduler (with TLS 1.3 the refusal arrives on the first read).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _talk_without_a_certificate(host, int(port), cert_dir / dask_tls.CA_CERT)

    # Trusting the cluster's CA but with a certificate of another CA: refused as well.
    from distributed.security import Security

    other = dask_tls.generate(tmp_path / "other")
    impostor = Security(
        require_encryption=True,
        tls_ca_file=str(cert_dir / dask_tls.CA_CERT),
        tls_client_cert=str(other.cert("client")),
        tls_client_key=str(other.key("client")),
    )
    with pytest.raises((OSError, TimeoutError)):
        Client(address, security=impostor, timeout=5)

    # Each refusal was the scheduler's (the impostor trusted the scheduler's certificate).
    log = scheduler.log_tail(1 << 20)
    assert log.count("TLS handshake failed") - refused_before >= 3, log[-3000:]

    # The right certificates work (the same cluster, so the refusals above were not chance).
    with Client(address, security=dask_tls.security(cert_dir), timeout=30) as c:
        assert c.submit(os.getpid).result(timeout=30) > 0
