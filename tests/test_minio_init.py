"""docker/minio-init.sh and docker/minio-policies: the S3 users of the compose deployment.

There is no MinIO here: the script runs under `sh` behind docker/entrypoint.sh, as in the
minio-init container, with a stand-in `mc` on PATH that records each call (and, like mc before
it was made idempotent, fails an attach that is already in effect). The policies are checked
by a small evaluator of IAM's Allow/Action/Resource rules, and against real storage code on
moto's S3 server in tests/integration/test_s3_identities.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docker" / "minio-init.sh"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
POLICIES = REPO / "docker" / "minio-policies"
USERS = {  # user -> (policy, the variable its secret comes from)
    "tinysub-api": ("tinysub-api", "TINYSUB_S3_API_SECRET"),
    "tinysub-dask-worker": ("tinysub-compute", "TINYSUB_S3_DASK_WORKER_SECRET"),
    "tinysub-ray-worker": ("tinysub-compute", "TINYSUB_S3_RAY_WORKER_SECRET"),
}

FAKE_MC = """#!{python}
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
state = Path(os.environ["MC_STATE"])
entry = {{"args": args}}
if args[:3] == ["admin", "policy", "create"]:
    entry["policy"] = json.loads(Path(args[5]).read_text())
if args[:3] == ["admin", "policy", "attach"]:
    if os.environ.get("MC_FAIL") == "attach":
        print("mc: <ERROR> Unable to make user/group policy association. Access Denied.",
              file=sys.stderr)
        sys.exit(1)
    mark = state / ("attached-" + args[4] + "-" + args[6])
    if mark.exists():
        print("mc: <ERROR> Unable to make user/group policy association. The specified policy "
              "change is already in effect. (Specified policy update has no net effect).",
              file=sys.stderr)
        sys.exit(1)
    mark.touch()
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(entry) + "\\n")
"""


def production_secrets() -> dict[str, str]:
    env = {
        "MINIO_ROOT_USER": "root-user-0123456789",
        "MINIO_ROOT_PASSWORD": "root-0123456789abcdef",
    }
    for _, var in USERS.values():
        env[var] = f"{var.lower()}-0123456789abcdef"
    return env


class FakeMinio:
    """A folder with the stand-in `mc` and what it was asked to do."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.tmp = root / "tmp"
        for d in (self.bin, self.state, self.tmp):
            d.mkdir()
        mc = self.bin / "mc"
        mc.write_text(FAKE_MC.format(python=sys.executable))
        mc.chmod(mc.stat().st_mode | stat.S_IXUSR)

    def run(self, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
        full = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "MC_STATE": str(self.state),
            "TMPDIR": str(self.tmp),
            "TINYSUB_MINIO_POLICY_DIR": str(POLICIES),
            "TINYSUB_BUCKET": "tinysub",
            **env,
            **extra,
        }
        return subprocess.run(
            ["sh", str(ENTRYPOINT), "sh", str(SCRIPT)],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[dict]:
        path = self.state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def users(self) -> dict[str, tuple[str, str]]:
        """user -> (secret, attached policy), from the recorded calls."""
        secrets, attached = {}, {}
        for c in self.calls():
            a = c["args"]
            if a[:3] == ["admin", "user", "add"]:
                secrets[a[4]] = a[5]
            if a[:3] == ["admin", "policy", "attach"]:
                attached[a[6]] = a[4]
        return {u: (secrets[u], attached.get(u)) for u in secrets}

    def policies(self) -> dict[str, dict]:
        return {
            c["args"][4]: c["policy"]
            for c in self.calls()
            if c["args"][:3] == ["admin", "policy", "create"]
        }


@pytest.fixture
def minio(tmp_path) -> FakeMinio:
    return FakeMinio(tmp_path)


def test_creates_the_bucket_and_one_user_per_role(minio):
    env = production_secrets()
    done = minio.run(env)
    assert done.returncode == 0, done.stderr
    calls = [c["args"] for c in minio.calls()]
    assert calls[0][:4] == ["alias", "set", "store", "http://minio:9000"]
    assert calls[0][4:] == [env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]]
    assert calls[1] == ["mb", "--ignore-existing", "store/tinysub"]
    assert minio.users() == {u: (env[var], policy) for u, (policy, var) in USERS.items()}
    assert set(minio.policies()) == {"tinysub-api", "tinysub-compute"}
    # The root password never reaches a user.
    assert env["MINIO_ROOT_PASSWORD"] not in {s for s, _ in minio.users().values()}


def test_running_it_again_changes_nothing_and_succeeds(minio):
    env = production_secrets()
    assert minio.run(env).returncode == 0
    first = (minio.users(), minio.policies())
    again = minio.run(env)  # the stand-in now fails each attach as "already in effect"
    assert again.returncode == 0, again.stderr
    assert (minio.users(), minio.policies()) == first


def test_other_mc_failures_fail_the_job(minio):
    done = minio.run(production_secrets(), MC_FAIL="attach")
    assert done.returncode != 0
    assert "Access Denied" in done.stderr


def test_a_changed_secret_is_set_on_the_next_run(minio):
    env = production_secrets()
    minio.run(env)
    env["TINYSUB_S3_API_SECRET"] = "rotated-0123456789abcdef"
    assert minio.run(env).returncode == 0
    assert minio.users()["tinysub-api"][0] == "rotated-0123456789abcdef"


@pytest.mark.parametrize("var", ["TINYSUB_S3_DASK_WORKER_SECRET", "MINIO_ROOT_PASSWORD"])
def test_shared_secrets_are_refused(minio, var):
    env = production_secrets()
    env[var] = env["TINYSUB_S3_API_SECRET"]
    done = minio.run(env)
    assert done.returncode == 64 and "must all differ" in done.stderr
    assert minio.calls() == []


def test_access_keys_can_be_chosen_but_not_shared(minio):
    env = production_secrets()
    env["TINYSUB_S3_API_ACCESS_KEY"] = "registry-7"
    assert minio.run(env).returncode == 0
    assert set(minio.users()) == {"registry-7", "tinysub-dask-worker", "tinysub-ray-worker"}
    env["TINYSUB_S3_RAY_WORKER_ACCESS_KEY"] = "tinysub-dask-worker"
    done = minio.run(env)
    assert done.returncode == 64 and "access keys and MINIO_ROOT_USER must" in done.stderr


@pytest.mark.parametrize("var", [var for _, var in USERS.values()])
def test_placeholder_and_missing_secrets_are_refused(minio, var):
    env = production_secrets()
    env[var] = "dev-only-s3-secret-value"
    done = minio.run(env, TINYSUB_DEPLOY_PROFILE="production")
    assert done.returncode == 64 and f"{var} holds a placeholder value" in done.stderr
    del env[var]
    done = minio.run(env)
    assert done.returncode != 0 and f"set {var}" in done.stderr
    assert minio.calls() == []


def test_the_dev_profile_takes_the_dev_env_values(minio):
    pairs = (line.split("=", 1) for line in (REPO / "docker" / "dev.env").read_text().splitlines())
    dev = {k: v for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}
    done = minio.run({k: dev[k] for k in dev if k.startswith(("MINIO_", "TINYSUB_S3_"))},
                     TINYSUB_DEPLOY_PROFILE=dev["TINYSUB_DEPLOY_PROFILE"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(minio.users()) == set(USERS)


def test_the_bucket_name_is_put_into_the_policies(minio):
    assert minio.run(production_secrets(), TINYSUB_BUCKET="models-prod").returncode == 0
    text = json.dumps(minio.policies())
    assert "@BUCKET@" not in text
    assert "arn:aws:s3:::models-prod/registry/*" in text
    assert "tinysub" not in text.replace("tinysub-", "")  # only the policy names say tinysub


# ---- what each policy allows -----------------------------------------------------------------


def allowed(policy: dict, action: str, resource: str) -> bool:
    """IAM's rule for identity policies with Allow statements only: some statement names the
    action and the resource (`*` matches any run of characters, `/` included)."""
    assert all(s["Effect"] == "Allow" and "Condition" not in s for s in policy["Statement"])
    return any(
        any(fnmatch.fnmatchcase(action, a) for a in s["Action"])
        and any(fnmatch.fnmatchcase(resource, r) for r in s["Resource"])
        for s in policy["Statement"]
    )


def load_policy(name: str, bucket: str = "tinysub") -> dict:
    return json.loads((POLICIES / f"{name}.json").read_text().replace("@BUCKET@", bucket))


BUCKET = "arn:aws:s3:::tinysub"
TRAJECTORY = f"{BUCKET}/registry/trajectories/sst2/zarr.json"
UPLOAD = f"{BUCKET}/registry/uploads/sst2/row-3/data"
BASIS = f"{BUCKET}/registry/bases/sst2/task/v1/layer.0/c/0/0"
INCOMING = f"{BUCKET}/incoming/runs/sst2/zarr.json"
ELSEWHERE = f"{BUCKET}/backups/registry.db"

CASES = [  # (action, resource, api may, compute may)
    ("s3:ListBucket", BUCKET, True, True),
    ("s3:GetBucketLocation", BUCKET, True, True),
    ("s3:GetObject", TRAJECTORY, True, True),
    ("s3:GetObject", INCOMING, True, True),
    ("s3:GetObject", BASIS, True, True),
    ("s3:GetObject", ELSEWHERE, False, False),
    ("s3:PutObject", TRAJECTORY, True, False),
    ("s3:PutObject", UPLOAD, True, False),
    ("s3:PutObject", BASIS, True, True),
    ("s3:DeleteObject", BASIS, True, True),  # zarr drops chunks that hold only the fill value
    ("s3:DeleteObject", TRAJECTORY, True, False),
    ("s3:PutObject", INCOMING, False, False),  # a trusted prefix: read, never written here
    ("s3:DeleteObject", INCOMING, False, False),
    ("s3:PutObject", ELSEWHERE, False, False),
    ("s3:CreateBucket", "arn:aws:s3:::other", False, False),
    ("s3:DeleteBucket", BUCKET, False, False),
    ("s3:PutBucketPolicy", BUCKET, False, False),
    ("s3:ListAllMyBuckets", "arn:aws:s3:::*", False, False),
    ("admin:CreateUser", "arn:minio:admin:::*", False, False),
]


@pytest.mark.parametrize(("action", "resource", "api", "compute"), CASES)
def test_least_privilege(action, resource, api, compute):
    assert allowed(load_policy("tinysub-api"), action, resource) is api
    assert allowed(load_policy("tinysub-compute"), action, resource) is compute


def test_policies_name_no_wildcard_action_or_bucket():
    for path in POLICIES.glob("*.json"):
        policy = load_policy(path.stem)
        assert len(path.read_text()) <= 2048  # MinIO's limit on a policy file
        for s in policy["Statement"]:
            assert not any(a.endswith("*") for a in s["Action"]), path.name
            assert all(r.startswith(f"{BUCKET}") for r in s["Resource"]), path.name
