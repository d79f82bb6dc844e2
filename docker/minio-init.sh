#!/bin/sh
# The minio-init job (minio/mc image, root credentials): the bucket, and one MinIO user per
# role with the least rights it needs (docker/minio-policies/*.json, @BUCKET@ = the bucket):
#
#   user (access key)    policy            secret from                      used by
#   tinysub-api          tinysub-api       TINYSUB_S3_API_SECRET            api (local executor too)
#   tinysub-dask-worker  tinysub-compute   TINYSUB_S3_DASK_WORKER_SECRET    dask-worker
#   tinysub-ray-worker   tinysub-compute   TINYSUB_S3_RAY_WORKER_SECRET     ray-worker
#
# The access keys are these names unless TINYSUB_S3_{API,DASK_WORKER,RAY_WORKER}_ACCESS_KEY
# say otherwise (docker-compose.yml hands the same values to the services).
#
# tinysub-api reads registry/ and incoming/ and writes registry/; tinysub-compute reads the
# same and writes only registry/bases/. Everything else (the fine-tuning worker, the Dask
# scheduler, the Ray head, dev-seed) has no S3 identity at all.
#
# Safe to re-run: `mc mb --ignore-existing`, `policy create` overwrites a policy, `user add`
# sets the secret of an existing user (so changing a secret and re-running rotates it), and an
# attach that is already in effect is not an error. Only builtins and `mc` are used: the mc
# image has no sed or grep.
set -eu

bucket=${TINYSUB_BUCKET:?set TINYSUB_BUCKET}
policies=${TINYSUB_MINIO_POLICY_DIR:-/tinysub/minio-policies}
work=${TMPDIR:-/tmp}

fail() {
    echo "minio-init: $1" >&2
    exit 64
}

api_user=${TINYSUB_S3_API_ACCESS_KEY:-tinysub-api}
dask_user=${TINYSUB_S3_DASK_WORKER_ACCESS_KEY:-tinysub-dask-worker}
ray_user=${TINYSUB_S3_RAY_WORKER_ACCESS_KEY:-tinysub-ray-worker}

# A shared secret would let one role sign as another (the access keys are no secret), and a
# shared access key would leave one user for two roles.
distinct() {
    while [ $# -gt 1 ]; do
        first=$1
        shift
        for other in "$@"; do
            [ "$first" != "$other" ] || return 1
        done
    done
}
distinct "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}" \
    "${TINYSUB_S3_API_SECRET:?set TINYSUB_S3_API_SECRET}" \
    "${TINYSUB_S3_DASK_WORKER_SECRET:?set TINYSUB_S3_DASK_WORKER_SECRET}" \
    "${TINYSUB_S3_RAY_WORKER_SECRET:?set TINYSUB_S3_RAY_WORKER_SECRET}" \
    || fail "the S3 secrets and MINIO_ROOT_PASSWORD must all differ"
distinct "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}" "$api_user" "$dask_user" "$ray_user" \
    || fail "the S3 access keys and MINIO_ROOT_USER must all differ"

mc alias set store "${TINYSUB_MINIO_URL:-http://minio:9000}" \
    "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "store/$bucket"

# policy NAME: docker/minio-policies/NAME.json with the bucket's name put in, created on MinIO.
policy() {
    out="$work/tinysub-policy-$1.json"
    : >"$out"
    while IFS= read -r line || [ -n "$line" ]; do
        while :; do
            case $line in
                *@BUCKET@*) line="${line%%@BUCKET@*}$bucket${line#*@BUCKET@}" ;;
                *) break ;;
            esac
        done
        printf '%s\n' "$line" >>"$out"
    done <"$policies/$1.json"
    mc admin policy create store "$1" "$out"
}

# user NAME POLICY SECRET_VARIABLE
user() {
    eval "secret=\${$3}"
    mc admin user add store "$1" "$secret" >/dev/null
    if ! said=$(mc admin policy attach store "$2" --user "$1" 2>&1); then
        case $said in
            *"already in effect"* | *"no net effect"*) ;;
            *) printf '%s\n' "$said" >&2; exit 1 ;;
        esac
    fi
    echo "minio-init: user $1 has policy $2"
}

policy tinysub-api
policy tinysub-compute
user "$api_user" tinysub-api TINYSUB_S3_API_SECRET
user "$dask_user" tinysub-compute TINYSUB_S3_DASK_WORKER_SECRET
user "$ray_user" tinysub-compute TINYSUB_S3_RAY_WORKER_SECRET
echo "minio-init: bucket $bucket and its users are ready"
