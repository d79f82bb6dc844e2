"""The compose deployment's S3 users (docker/minio-policies) against real storage code.

moto's S3 server stands in for MinIO with IAM enforcement on: each role signs with keys of an
IAM user holding exactly its policy file, as minio-init sets them up. moto evaluates a policy's
Action and Resource (not Conditions; ours have none), which is what these policies consist of.
The registry's identity writes a trajectory and reads one from the trusted incoming/ prefix;
a compute worker's identity computes a basis from both into registry/bases/ but can write no
trajectory; neither can write incoming/, and a user without a policy (as the fine-tuning worker,
which has no S3 identity at all) can read nothing.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from tests.promised import import_or_skip_missing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BUCKET = "tinysub"
ROLES = {"api": "tinysub-api", "compute": "tinysub-compute", "nobody": None}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto server of our own (auth is switched on for the whole process), a trajectory in
    incoming/ written before that (as an operator would, with their own credentials), and
    storage options per role."""
    import_or_skip_missing("s3", "moto.server", "moto[server] is not installed (dev extra)")
    import_or_skip_missing("s3", "s3fs", "s3fs is not installed (s3 extra)")
    import boto3

    from services.local import REPO
    from tests.topology import LocalS3

    server = LocalS3(tmp_path_factory.mktemp("s3-iam"), bucket=BUCKET)
    try:
        server.start()
        layout = _layout()
        _write_trajectory(f"s3://{BUCKET}/incoming/runs/a", layout, server.storage_options, 1)
        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            aws_access_key_id=server.KEY,
            aws_secret_access_key=server.SECRET,
            region_name=server.REGION,
        )
        options = {}
        for role, policy in ROLES.items():
            iam.create_user(UserName=f"tinysub-{role}")
            if policy:
                text = (REPO / "docker" / "minio-policies" / f"{policy}.json").read_text()
                iam.put_user_policy(
                    UserName=f"tinysub-{role}",
                    PolicyName=policy,
                    PolicyDocument=text.replace("@BUCKET@", BUCKET),
                )
            key = iam.create_access_key(UserName=f"tinysub-{role}")["AccessKey"]
            options[role] = {
                "key": key["AccessKeyId"],
                "secret": key["SecretAccessKey"],
                "client_kwargs": server.storage_options["client_kwargs"],
            }
        request = urllib.request.Request(
            f"{server.endpoint}/moto-api/reset-auth",
            data=b"0",  # no more unauthenticated requests: every one is checked from now on
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert json.load(r)["status"] == "ok"
        yield {"options": options, "layout": layout, "root": server.storage_options}
    finally:
        server.stop()


def _layout():
    from storage.layout import build_layout

    return build_layout(
        [("encoder.layer.0.attention.weight", (40, 30)), ("encoder.layer.0.attention.bias", (30,))]
    )


def _write_trajectory(url: str, layout, options: dict, seed: int):
    from storage.trajectory import TrajectoryStore
    from tests.conftest import make_trajectory

    store = TrajectoryStore.create(
        url, layout, model_name="tiny", chunk_cols=64, storage_options=options
    )
    for i, row in enumerate(make_trajectory(layout, 5, seed=seed)):
        store.append(row, step=i, epoch=i)
    return store


def s3fs_for(options: dict):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def _denied(fn) -> None:
    """fn fails, and for want of permission (not for a missing object)."""
    from storage.errors import StorageError

    with pytest.raises((PermissionError, StorageError)) as info:
        fn()
    text = f"{info.value} {info.value.__cause__}"
    assert "Access Denied" in text or "Forbidden" in text or "AccessDenied" in text, text


def test_each_role_can_do_its_work_and_no_more(s3):
    from storage.basis import MANIFEST, BasisStore
    from storage.objects import Location
    from storage.trajectory import MANIFEST as TRAJECTORY_MANIFEST
    from storage.trajectory import TrajectoryStore
    from worker.executors import LocalExecutor
    from worker.svd.bases import task_basis

    api, compute, nobody = (s3["options"][r] for r in ("api", "compute", "nobody"))
    layout = s3["layout"]
    registry = f"s3://{BUCKET}/registry"
    incoming = f"s3://{BUCKET}/incoming/runs/a"

    # The registry: writes trajectories (and upload staging) under registry/, reads incoming/.
    _write_trajectory(f"{registry}/trajectories/b", layout, api, 2)
    Location.from_url(f"{registry}/uploads/b", api).write_bytes_atomic(b"part", "row-0")
    assert TrajectoryStore.open(incoming, storage_options=api).num_rows == 5
    _denied(lambda: _write_trajectory(f"s3://{BUCKET}/incoming/runs/c", layout, api, 3))
    _denied(lambda: _write_trajectory(f"s3://{BUCKET}/elsewhere/d", layout, api, 3))

    # A compute worker: reads both trajectories, writes bases, nothing else.
    with LocalExecutor(2) as ex:
        for name, url in (("a", incoming), ("b", f"{registry}/trajectories/b")):
            out = f"{registry}/bases/{name}/task/v1"
            task_basis(url, out, 3, storage_options=compute, executor=ex, block_cols=64)
            basis = BasisStore.open(out, storage_options=api)  # the registry serves it
            v = basis.load(basis.layer_names[0])  # (D, k), orthonormal columns
            assert np.allclose(v.T @ v, np.eye(3), atol=1e-5)
    _denied(lambda: _write_trajectory(f"{registry}/trajectories/e", layout, compute, 4))
    _denied(lambda: _write_trajectory(f"s3://{BUCKET}/incoming/runs/f", layout, compute, 4))
    uploads = Location.from_url(f"{registry}/uploads/b", compute)
    _denied(lambda: uploads.write_bytes_atomic(b"x", "row-1"))

    # Deleting: the registry may under registry/ (what a failed job left, services/jobs/finish.py),
    # a worker only under registry/bases/ (zarr drops chunks that hold only the fill value).
    # One object at a time: moto authorizes a multi-object delete against the bucket rather
    # than per key as S3 and MinIO do.
    manifest = f"{BUCKET}/registry/bases/b/task/v1/{MANIFEST}"
    s3fs_for(api).rm_file(manifest)
    assert not BasisStore.exists(f"{registry}/bases/b/task/v1", api)
    trajectory_file = f"{BUCKET}/registry/trajectories/b/{TRAJECTORY_MANIFEST}"
    _denied(lambda: s3fs_for(compute).rm_file(trajectory_file))
    s3fs_for(compute).rm_file(f"{BUCKET}/registry/bases/a/task/v1/{MANIFEST}")

    # No policy, no access: what an identity without rights (or none at all) gets.
    _denied(lambda: TrajectoryStore.open(incoming, storage_options=nobody))
    _denied(lambda: TrajectoryStore.open(f"{registry}/trajectories/b", storage_options=nobody))
